"""The counterfactual test's cost against its forward floor.

    PYTHONPATH=src python benchmarks/counterfactual_cost.py [--images 64] [--threads 2]

`counterfactual` scores N mistakes x (contrast map, random map) x 3 fractions imputed images
plus the N originals: 7N forwards is its floor, whatever the imputation costs. The script times
the whole call, the same number of plain forwards (the floor) and the imputation alone, on the
CIFAR ResNet18 (untrained: cost does not depend on the weights) at 32 px, and prints the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from camlens.metrics import CounterfactualConfig, MetricConfig, baseline_maps, counterfactual
from camlens.metrics.road import noisy_linear_impute
from camlens.model import ResNet18


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ResNet18(10).eval()
    n = args.images
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 32, 32, generator=g)
    cams = baseline_maps(images.shape, "random", g, grid=(4, 4))  # a stand-in contrast map
    preds, labels = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    config = CounterfactualConfig()
    metric = MetricConfig(batch_size=args.batch_size)
    items = n * (2 * len(config.fractions) + 1)
    floor_batch = images.repeat(2 * len(config.fractions) + 1, 1, 1, 1)  # (items, 3, H, W)

    def floor() -> None:
        with torch.no_grad():
            for start in range(0, items, args.batch_size):
                model(floor_batch[start : start + args.batch_size])

    def impute() -> None:
        removed = torch.rand(items - n, 32, 32, generator=g) < 0.1
        for start in range(0, items - n, args.batch_size):
            stop = start + args.batch_size
            part = removed[start:stop]
            noisy_linear_impute(floor_batch[start : start + part.shape[0]], part)

    def whole() -> None:
        counterfactual(model, images, cams, preds, labels, config, metric)

    whole()  # warm-up
    t_floor, t_impute, t_whole = best_of(floor), best_of(impute), best_of(whole)
    print(f"{n} mistakes, {items} forwards, {args.threads} threads, batch {args.batch_size}")
    print(f"forward floor       {t_floor:7.3f} s  ({t_floor / items * 1e3:.2f} ms per image)")
    print(f"imputation alone    {t_impute:7.3f} s")
    print(f"counterfactual      {t_whole:7.3f} s  = {t_whole / t_floor:.2f} x the floor")


if __name__ == "__main__":
    main()
