"""One compare as an object: what every step of it reads, built once by `compare`.

The steps (probe and estimate in `budget`, scoring in `scoring`, the sanity checks in `sanity`,
the grid test in `grid`) take the job rather than a dozen loose arguments. Engines come from
`camlens.explain.engine_for` (or the caller's own `engines`); maps the explain stream already
made for a report are taken from it (`shown`) rather than computed again with other settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from camlens.cam import normalize_maps
from camlens.cam.layers import upsample
from camlens.choices import BASELINE_KINDS, BASELINES
from camlens.data import Dataset
from camlens.evaluate import Mistakes, as_float_images
from camlens.explain import Explanations, engine_for
from camlens.metrics import MetricConfig
from camlens.metrics.core import EngineLike
from camlens.plan import ExplainError, ExplainPlan, GridConfig, layer_parts

__all__ = ["CompareConfig", "CompareJob", "EngineMaker", "Explained", "closed", "shown_maps"]

# a method of the caller's own: (model, layers) -> engine, `(images, targets) -> (N, H, W)`
EngineMaker = Callable[[nn.Module, Sequence[str]], EngineLike]  # (model, layers) -> engine
# what a report's explain stream made: its mistakes in gallery order, each method's maps
Explained = tuple[Mistakes, Mapping[str, Explanations]]


@dataclass(frozen=True)
class CompareConfig:
    """How `compare` judges the maps of a plan: what it checks beyond the plan's methods,
    layers and images (`ExplainPlan.compare_limit`), in one object rather than loose keywords.
    """

    # mistakes the sanity checks (cascade, Random Logit, entropy, floor) run on
    sanity_images: int = 16
    # the family-wise error rate of the paired decisions (Holm over every paired cell)
    alpha: float = 0.05
    # the references every score is judged against, of BASELINE_KINDS ("random-pixel", i.i.d.
    # pixels, on request)
    baselines: tuple[str, ...] = BASELINES
    # the grid localisation test, run first; None: not run
    grid: GridConfig | None = field(default_factory=GridConfig)
    # the metrics' knobs (`camlens.metrics.MetricConfig`); None: the plan's seed and
    # eval_batch_size, the rest at their defaults
    metrics: MetricConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "baselines", tuple(self.baselines))
        if self.sanity_images < 1:
            raise ExplainError(f"sanity_images must be >= 1, got {self.sanity_images}")
        unknown = [b for b in self.baselines if b not in BASELINE_KINDS]
        if unknown or not self.baselines:
            raise ExplainError(
                f"baselines must name some of {', '.join(BASELINE_KINDS)}: got {unknown or '()'}"
            )
        if not 0 < self.alpha < 1:
            raise ExplainError(f"alpha must be in (0, 1), got {self.alpha}")


@dataclass(frozen=True)
class CompareJob:
    """What the steps of one compare share; built and checked once by `compare`."""

    model: nn.Module
    data: Dataset
    plan: ExplainPlan  # checked; `layers` are the compared entries ("layer3+layer4": one map)
    config: CompareConfig
    metrics: MetricConfig
    logits: Tensor  # (N, K) of the whole test split, on the CPU
    subsets: dict[str, Tensor]  # "mistakes", "correct" -> (n,) test indices
    targets: dict[str, Tensor]  # subset -> (n,) the classes its maps explain
    engines: Mapping[str, EngineMaker] = field(default_factory=dict)
    # (method, layer) -> (n, H, W) maps of the "mistakes" subset taken from the explain stream
    shown: Mapping[tuple[str, str], Tensor] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def engine(self, method: str, model: nn.Module, layer: str, seed: int | None = None) -> Any:
        """The engine of `method` at the compared entry `layer` on `model` (the job's, or a
        randomised copy): the caller's own, or the plan's (`engine_for`). `seed`: another draw
        of a stochastic method's noise."""
        if method in self.engines:
            return self.engines[method](model, layer_parts(layer))
        return engine_for(method, model, layer_parts(layer), self.plan, seed=seed)

    def images(self, subset: str) -> Tensor:
        """(n, 3, H, W) [0, 1] images of `subset`, on the model's device."""
        return as_float_images(self.data.test.images[self.subsets[subset]]).to(self.device)


def shown_maps(explained: Explained, limit: int) -> dict[tuple[str, str], Tensor]:
    """The explain stream's predicted-class maps of its first `limit` mistakes, per (method,
    layer), upsampled and min-max normalised as compare's own engines normalise (a positive
    scale per image away from the gallery's "pair" maps: the same pixel order)."""
    mistakes, expls = explained
    n = min(limit, len(mistakes))
    maps = {}
    for method, expl in expls.items():
        for li, layer in enumerate(expl.layers):
            up = upsample(expl.pred_low[li][:n], expl.size)  # (n, h, w) -> (n, H, W)
            maps[(method, layer)] = normalize_maps([up], "minmax", False)[0]
    return maps


@contextmanager
def closed(engine: Any) -> Iterator[Any]:
    """Close an engine after use if it has `close` (camlens engines do; a function need not)."""
    try:
        yield engine
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
