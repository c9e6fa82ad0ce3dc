"""Measure the grid localisation test alone and print docs/trust.md's grid table.

    python tools/grid_table.py --data DATA [--model shipped] [--count 256] [--top-k 32]
        [--methods gradcam,gradcam++,layercam,eigencam,scorecam] [--layers layer3,layer4]
        [--out grid.json]

The same test `camlens compare` runs first (camlens.compare.grid_test, the same engines and
Score-CAM's top_k), without the rest of compare, so it runs on hundreds of grids in minutes.
Prints the table (share at the layer's grid, at the input's size, pointing; each with its 95%
bootstrap interval over grids; paired decisions against centre and random), the leakage
control, the line compare prints, each (method, layer)'s seconds per grid and the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from camlens import ExplainPlan, ModelConfig, open_model, predict
from camlens.cam import CamConfig
from camlens.choices import COMPARE_METHODS
from camlens.compare import grid_test
from camlens.explain import engine_for
from camlens.metrics import GridConfig, grid_maps

MARK = {"better": "**better**", "worse": "worse", "indistinguishable": "~"}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def table(result: dict) -> str:
    rows = {(r["method"], r["layer"], r["metric"]): r for r in result["rows"]}
    paired: dict[tuple, dict] = {}
    for r in result["paired"]:
        paired.setdefault((r["method"], r["layer"], r["metric"]), {})[r["vs"]] = r
    lines = [
        "| map | layer | share in its tile (native) | share (input size) | pointing |"
        " vs centre (share) | vs random (share) |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, layer in dict.fromkeys((r["method"], r["layer"]) for r in result["rows"]):
        cells = []
        for metric in ("share", "share_input", "pointing"):
            r = rows[(method, layer, metric)]
            cells.append(f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        vs = paired.get((method, layer, "share"), {})
        verdicts = [
            f"{vs[k]['diff']:+.3f} {MARK[vs[k]['decision']]}" if k in vs else "-"
            for k in ("centre", "random")
        ]
        lines.append(f"| {method} | {layer} | " + " | ".join(cells + verdicts) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="shipped")
    p.add_argument("--count", type=int, default=256)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--methods", default=",".join(COMPARE_METHODS))
    p.add_argument("--layers", default="layer3,layer4")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    opened = open_model(ModelConfig(model=args.model), args.data, progress=False)
    model, data = opened.model, opened.data
    logits = predict(model, data.test.images, 256)
    plan = ExplainPlan(cam=CamConfig(top_k=args.top_k or None))
    pairs = [(m, la) for m in args.methods.split(",") for la in args.layers.split(",")]
    cost: dict[str, float] = {}

    def maps_of(method, layer, grids):
        begin = time.perf_counter()
        with engine_for(method, model, [layer], plan) as engine:
            maps = grid_maps(engine, grids)
        cost[f"{method} {layer}"] = (time.perf_counter() - begin) / grids.images.shape[0]
        print(f"{method} {layer}: {cost[f'{method} {layer}']:.3f} s per grid", flush=True)
        return maps

    config = GridConfig(count=args.count)
    result = grid_test(model, data.test, logits, pairs, maps_of, config)
    wall = time.perf_counter() - start
    print(table(result))
    print(result["settings"].get("leakage", ""))
    print(result["line"])
    print(
        f"top_k {args.top_k}; {wall / 60:.1f} min in all on {cpu_name()}, "
        f"{torch.get_num_threads()} threads"
    )
    if args.out:
        args.out.write_text(
            json.dumps(result | {"seconds_per_grid": cost, "wall_s": wall}, indent=1)
        )


if __name__ == "__main__":
    main()
