"""The counterfactual test's cost against its forward floor, its cost against the maps at
224 px, and the agreement of its coarse fill with the full-size one at 32 px.

    PYTHONPATH=src python benchmarks/counterfactual_cost.py [--images 64] [--threads 2]
    PYTHONPATH=src python benchmarks/counterfactual_cost.py --size 224 --images 64
    PYTHONPATH=src python benchmarks/counterfactual_cost.py --agreement --images 256

--size S (S > 32): random images of S px through a small 1,000-class CNN (benchmarks/scale.py's)
and camlens's ResNet18: the seconds of the Grad-CAM maps (pred, true, contrast: what a gallery
computes) and of the counterfactual test of the same images with the default coarse fill
(`CounterfactualConfig.impute_side`), and their ratio.

--agreement: the shipped CIFAR model's mistakes on the shipped sample, their Grad-CAM contrast
maps, and the counterfactual test with today's full-size fill against the coarse fill at
working sides 16 and 8 px (the ratio 224 -> 64 is 3.5x: 32 -> 9): how often the verdicts
agree (the prediction after removal, beat-random, turned to the true class; every fraction),
and the drops' mean absolute difference and correlation.

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


def agreement(n: int) -> None:
    """The coarse fill's verdicts against the full-size fill's, on real mistakes at 32 px."""
    from camlens.data import load_dataset
    from camlens.evaluate import evaluate
    from camlens.explain import ExplainPlan, mistake_maps
    from camlens.model import load_checkpoint

    model, _ = load_checkpoint("shipped")
    data = load_dataset("sample")
    m = evaluate(model, data.test).mistakes
    rows = torch.arange(min(n, len(m)))
    images = data.test.images[m.indices[rows]]  # (M, 3, 32, 32) uint8
    plan = ExplainPlan(layers=("layer4",), counterfactual=False).check(model)
    expl = mistake_maps(model, images, m.labels[rows], plan, preds=m.preds[rows])
    contrast = expl.layer_maps(0)[2]  # (M, 32, 32)
    x, preds, labels = images.float() / 255, m.preds[rows], m.labels[rows]
    seeds = m.indices[rows].long()
    results, times = {}, {}
    for side in (None, 16, 8):
        config = CounterfactualConfig(resolution=(4, 4), impute_side=side)
        start = time.perf_counter()
        results[side] = counterfactual(model, x, contrast, preds, labels, config, seeds=seeds)
        times[side] = time.perf_counter() - start
    full = results[None]
    print(f"{len(rows)} mistakes of the shipped model on the sample, 32 px, fractions "
          f"{full.fractions}; full-size fill {times[None]:.1f} s")  # fmt: skip
    print("side\tpred after\tbeat random\tto true\tdrop |diff|\tdrop corr\tseconds")
    for side in (16, 8):
        r = results[side]
        same = [
            (getattr(r, name) == getattr(full, name)).float().mean().item()
            for name in ("preds_map", "beat_random", "to_true_map")
        ]
        diff = (r.drop_map - full.drop_map).abs().mean().item()
        corr = torch.corrcoef(torch.stack([r.drop_map.flatten(), full.drop_map.flatten()]))
        print(
            f"{side}\t{same[0]:.3f}\t{same[1]:.3f}\t{same[2]:.3f}\t{diff:.3f}"
            f"\t{corr[0, 1].item():.4f}\t{times[side]:.1f}"
        )


def at_size(n: int, size: int, batch: int) -> None:
    """Maps against the counterfactual test of the same n random images at `size` px."""
    from torch import nn

    from camlens.explain import ExplainPlan, mistake_maps

    small = nn.Sequential(  # benchmarks/scale.py's: 224 -> 7, a 1,000-way head
        nn.Conv2d(3, 16, 7, stride=4, padding=3), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 1000),
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)
    print(f"{n} random images at {size} px, Grad-CAM (pred, true, contrast) vs counterfactual")
    print("model\tmaps s\tcounterfactual s\tratio")
    for name, model, layer, k in (("small", small, "7", 1000), ("resnet18", None, "layer4", 10)):
        model = model if model is not None else ResNet18(k).eval()
        labels = torch.randint(0, k, (n,), generator=g)
        plan = ExplainPlan(layers=(layer,), cam_batch_size=batch, counterfactual=False)
        plan = plan.check(model)
        t0 = time.perf_counter()
        expl = mistake_maps(model, images, labels, plan)
        t_maps = time.perf_counter() - t0
        contrast = expl.layer_maps(0)[2]
        with torch.no_grad():
            preds = model(images[:1]).argmax(1).repeat(n)
        config = CounterfactualConfig(resolution=expl.resolutions[0])
        t0 = time.perf_counter()
        for start in range(0, n, batch):  # as mistake_counterfactual: a CAM batch at a time
            rows = slice(start, start + batch)
            counterfactual(model, images[rows], contrast[rows], preds[rows], labels[rows], config)
        t_cf = time.perf_counter() - t0
        print(f"{name}\t{t_maps:.2f}\t{t_cf:.2f}\t{t_cf / t_maps:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32, help="> 32: maps vs counterfactual")
    parser.add_argument("--agreement", action="store_true", help="coarse vs full fill, 32 px")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.agreement:
        return agreement(args.images)
    if args.size > 32:
        return at_size(args.images, args.size, 64)
    torch.manual_seed(0)
    model = ResNet18(10).eval()
    n = args.images
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 32, 32, generator=g)
    maps = baseline_maps(images.shape, "random", g, resolution=(4, 4))  # a stand-in contrast map
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
        counterfactual(model, images, maps, preds, labels, config, metric)

    whole()  # warm-up
    t_floor, t_impute, t_whole = best_of(floor), best_of(impute), best_of(whole)
    print(f"{n} mistakes, {items} forwards, {args.threads} threads, batch {args.batch_size}")
    print(f"forward floor       {t_floor:7.3f} s  ({t_floor / items * 1e3:.2f} ms per image)")
    print(f"imputation alone    {t_impute:7.3f} s")
    print(f"counterfactual      {t_whole:7.3f} s  = {t_whole / t_floor:.2f} x the floor")


if __name__ == "__main__":
    main()
