"""What the grid localisation test costs per grid, per method and layer, beside a plain forward.

    python benchmarks/grid_cost.py [--grids 16] [--threads N] [--top-k 32] [--repeats 2]

The test `camlens compare` runs first (camlens.compare.grid_test): n x n = 2 x 2 confident,
correct images of the bundled sample, one 64x64 input per grid for the shipped ResNet18, each
method's maps of all four tile classes from one forward (`explain_many`). For each default
compare method (COMPARE_METHODS, Score-CAM at top_k 32 as compare runs it) at layer3 and
layer4 the table gives seconds per grid and "x forward": that over one plain forward of the
64x64 grid. Then what building the grids costs (one forward per grid for the leakage control,
and one of the whole test split for confidence), and the resulting cost of the grid step of
`camlens compare --model shipped --data sample` at its default 64 grids. Nothing is asserted:
the figures depend on the machine, which is printed (lscpu's model name).
"""

from __future__ import annotations

import argparse
import time

import torch

from camlens import ExplainPlan, ModelConfig, open_model, predict
from camlens.choices import COMPARE_METHODS
from camlens.compare import with_top_k
from camlens.explain import engine_for
from camlens.metrics import GridConfig, grid_maps, make_grids
from helpers import cpu_name


def fastest(fn, repeats: int) -> float:
    """The fastest of `repeats` calls: the least disturbed by other work on the machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grids", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    opened = open_model(ModelConfig(model="shipped"), "sample", progress=False)
    model, data = opened.model, opened.data
    build_start = time.perf_counter()
    logits = predict(model, data.test.images, 256)
    split_s = time.perf_counter() - build_start
    config = GridConfig(count=args.grids, min_grids=1)
    build_s = fastest(
        lambda: make_grids(model, data.test.images, data.test.labels, logits, config),
        args.repeats,
    )
    grids = make_grids(model, data.test.images, data.test.labels, logits, config)
    g = grids.images.shape[0]
    with torch.no_grad():
        forward_s = fastest(lambda: model(grids.images), args.repeats) / g
    plan = with_top_k(ExplainPlan(methods=COMPARE_METHODS), args.top_k or None)
    print(
        f"{g} grids of 2x2 sample images ({grids.path} {grids.images.shape[-1]} px), "
        f"{torch.get_num_threads()} threads, {cpu_name()}"
    )
    print(f"plain forward of one grid: {forward_s * 1000:.2f} ms")
    print(f"{'method':<10} {'layer':<7} {'s / grid':>9} {'x forward':>10}")
    per_grid = {}
    for method in COMPARE_METHODS:
        for layer in ("layer3", "layer4"):
            with engine_for(method, model, [layer], plan) as engine:
                grid_maps(engine, grids)  # warm-up: first-call allocations are not the cost
                s = fastest(lambda engine=engine: grid_maps(engine, grids), args.repeats) / g
            per_grid[(method, layer)] = s
            print(f"{method:<10} {layer:<7} {s:>9.4f} {s / forward_s:>10.1f}")
    step = sum(per_grid.values())
    print(
        f"building {g} grids (leakage forward per grid): {build_s:.2f} s; the split's forward "
        f"for confidence: {split_s:.2f} s"
    )
    default = GridConfig().count
    print(
        f"all {len(per_grid)} (method, layer) at once: {step:.3f} s per grid, so the grid step "
        f"of `camlens compare --model shipped --data sample` ({default} grids): about "
        f"{step * default + build_s / g * default:.0f} s (estimated from these rates)"
    )


if __name__ == "__main__":
    main()
