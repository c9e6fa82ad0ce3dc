"""What a compare will cost, said before it starts: forwards counted, the forward timed.

Scoring costs a fixed number of forwards per image and map set (`score_forwards`); a method's
map costs what it took on the probe images, in forwards of the same model; the forward itself
is timed at a batch near the one scoring uses. The progress bar counts the same forwards.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from camlens.cam import eval_mode
from camlens.metrics import MetricConfig

__all__ = ["forward_seconds", "plan", "score_forwards"]


def forward_seconds(model: nn.Module, images: torch.Tensor) -> float:
    """Seconds of one forward per image, measured on `images` after a warm-up call."""
    with torch.no_grad(), eval_mode(model):
        model(images)
        start = time.perf_counter()
        model(images)
        return max((time.perf_counter() - start) / images.shape[0], 1e-7)


def score_forwards(cfg: MetricConfig) -> float:
    """Forwards per image that `score_maps` spends on every metric (ARCC's re-run aside)."""
    road = set(cfg.road_fractions) | set(cfg.arcc_fractions)
    curves = 2 * cfg.steps - 1 + (1 if cfg.replacement == "rise" else 0)
    return 1 + curves + 1 + 2 * len(road)  # the image, deletion + insertion, drop, ROAD


def plan(
    pairs,
    reference,
    subsets,
    sanity_methods,
    sanity_count,
    cost,
    sanity_cost,
    forward_s,
    *,
    share: float | None = None,
    world: int = 1,
):
    """What compare will score and what it should cost, as numbers and one paragraph.

    `forwards` counts the whole job's; under torchrun (`world` ranks side by side) the time is
    that of `share`, the forwards of the rank with the most (None: all of them)."""
    forwards = sum(cost.values()) + sum(sanity_cost.values())
    share = forwards if share is None else share
    seconds = share * forward_s
    ranks = f", {share:,.0f} on the busiest of {world} ranks," if world > 1 else ""
    methods = list(dict.fromkeys(m for m, _ in pairs))
    layers = list(dict.fromkeys(la for _, la in pairs))
    names = ", ".join(f"{k} {la}" if la != "-" else k for k, la in reference)
    summary = (
        f"compare: {len(methods)} methods ({', '.join(methods)}) at {', '.join(layers)}, "
        f"baselines {names}, on {subsets['mistakes'].numel()} mistakes and "
        f"{subsets['correct'].numel()} correct images; sanity checks of {len(sanity_methods)} "
        f"methods on {sanity_count} mistakes. About {forwards:,.0f} forwards in all{ranks} at "
        f"{forward_s * 1e3:.2f} ms per image: roughly {duration(seconds)} here"
    )
    return {
        "forwards": round(forwards),
        "forwards_per_rank": round(share),
        "ranks": world,
        "seconds_per_forward": forward_s,
        "seconds": round(seconds, 1),
        "summary": summary,
    }


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
