"""`score_maps`: every metric of a set of maps in one call, sharing the forward passes it can.

The unperturbed probabilities are computed once and serve as both curves' far ends, Average
Drop's Y and nothing else is recomputed; ROAD runs its fractions and ARCC's in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from camlens.cam.precision import full_fp32
from camlens.metrics.arcc import arcc, coherency, complexity
from camlens.metrics.config import MetricConfig
from camlens.metrics.core import (
    EngineLike,
    check_inputs,
    make_generator,
    target_probs,
    trapezoid_auc,
)
from camlens.metrics.perturb import drop_increase, perturbation_curves
from camlens.metrics.road import road_curves, road_score

__all__ = ["HIGHER_IS_BETTER", "METRICS", "Scores", "score_maps"]

METRICS = ("deletion", "insertion", "drop", "increase", "road", "arcc")

# every value `score_maps` can return -> whether a higher value means a more faithful map
HIGHER_IS_BETTER = {
    "deletion": False,
    "insertion": True,
    "drop": False,
    "increase": True,
    "road": True,
    "road_morf": False,
    "road_lerf": True,
    "arcc": True,
    "arcc_coherency": True,
    "arcc_complexity": False,
    "arcc_road": True,
}


@dataclass(frozen=True)
class Scores:
    """What `score_maps` measured: per-image values, the curves behind them, the base scores."""

    values: dict[str, Tensor]  # name -> (N,) per image (see HIGHER_IS_BETTER)
    curves: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # name -> (x, (N, P))
    probs: Tensor | None = None  # (N,) target probability on the unperturbed images


@full_fp32()  # TF32 off, restored after (camlens.cam.precision)
def score_maps(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | int,
    metrics: Sequence[str] = METRICS,
    engine: EngineLike | None = None,
    config: MetricConfig | None = None,
    generator: torch.Generator | None = None,
    **overrides: Any,
) -> Scores:
    """Score (N, H, W) maps in [0, 1] of `images` (N, C, H, W) in [0, 1] for class `targets`.

    Values (N,) per image: "deletion", "insertion" (AUC), "drop", "increase", "road",
    "road_morf", "road_lerf" (curve means), "arcc" with its terms "arcc_coherency",
    "arcc_complexity", "arcc_road". ARCC re-runs the method on image * map: pass the `engine`
    that made `maps`. Curves: "deletion", "insertion", "road_morf", "road_lerf".
    """
    cfg = replace(config or MetricConfig(), **overrides)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}: choose from {', '.join(METRICS)}")
    if "arcc" in metrics and engine is None:
        raise ValueError("arcc needs engine=, the CAM engine that made maps (coherency re-runs it)")
    targets = check_inputs(images, maps, targets)
    g = make_generator(generator, cfg.seed)
    n, bs = images.shape[0], cfg.batch_size
    probs = target_probs(model, n, lambda a, b: (images[a:b], targets[a:b]), bs)  # (N,)
    values: dict[str, Tensor] = {}
    curves: dict[str, tuple[Tensor, Tensor]] = {}
    which = tuple(m for m in ("deletion", "insertion") if m in metrics)
    if which:
        for name, (x, y) in perturbation_curves(
            model, images, maps, targets, cfg, probs, which
        ).items():
            curves[name] = (x, y)
            values[name] = trapezoid_auc(x, y)
    if "drop" in metrics or "increase" in metrics:
        drop, increase = drop_increase(model, images, maps, targets, cfg, probs)
        values.update({k: v for k, v in (("drop", drop), ("increase", increase)) if k in metrics})
    if "road" in metrics or "arcc" in metrics:
        wanted = cfg.road_fractions if "road" in metrics else ()
        if "arcc" in metrics:
            wanted = wanted + tuple(f for f in cfg.arcc_fractions if f not in wanted)
        morf, lerf = road_curves(model, images, maps, targets, wanted, cfg, g)  # (N, F) each

        def pick(fractions: tuple[float, ...]) -> list[int]:
            return [wanted.index(f) for f in fractions]

        if "road" in metrics:
            cols = pick(cfg.road_fractions)
            x = torch.tensor(cfg.road_fractions, device=images.device)
            curves["road_morf"], curves["road_lerf"] = (x, morf[:, cols]), (x, lerf[:, cols])
            values["road"] = road_score(morf[:, cols], lerf[:, cols])
            values["road_morf"], values["road_lerf"] = morf[:, cols].mean(1), lerf[:, cols].mean(1)
        if "arcc" in metrics:
            cols = pick(cfg.arcc_fractions)
            terms = {
                "arcc_coherency": coherency(engine, images, maps, targets),
                "arcc_complexity": complexity(maps),
                "arcc_road": road_score(morf[:, cols], lerf[:, cols]),
            }
            values.update(terms)
            values["arcc"] = arcc(
                terms["arcc_coherency"], terms["arcc_complexity"], terms["arcc_road"]
            )
    return Scores(values, curves, probs)
