"""The gallery step: pick the mistakes, explain them chunk by chunk, draw a gallery per method.

write_galleries(model, data, out, plan) -> Galleries
prepare_plan(model, plan, image_size) -> plan  layers resolved, checked once against the model
choose_layers(model, layers, image_size)      --layer checked; None: the last before pooling
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from camlens.cam import candidate_layers, pick_layer
from camlens.choices import DEFAULT_LAYERS
from camlens.classifier import own_layer_names
from camlens.data import Dataset
from camlens.distributed import is_writer
from camlens.evaluate import Mistakes, find_mistakes, predict
from camlens.explain import (
    ExplainError,
    ExplainPlan,
    Explanations,
    select_mistakes,
    stream_mistake_maps,
)
from camlens.gallery import GalleryConfig
from camlens.metrics.counterfactual import CounterfactualConfig
from camlens.outputs import consume
from camlens.pipeline.outputs import OUTPUTS, OutputJob
from camlens.plan import COUNTERFACTUAL_MAX_SIDE, layer_parts

__all__ = [
    "LAYERS",
    "Galleries",
    "choose_layers",
    "prepare_plan",
    "write_galleries",
]

LAYERS = DEFAULT_LAYERS  # the name the pipeline has exported


@dataclass(frozen=True)
class Galleries:
    """What `write_galleries` explained and where it drew it."""

    mistakes: Mistakes  # the mistakes explained, with their images, in gallery order
    explanations: dict[str, Explanations]  # method -> maps of `mistakes` (native resolution)
    folders: dict[str, Path]  # method -> its gallery folder, out/gallery/<method>
    # method -> seconds of maps, drawing, encoding, writing (see camlens.gallery.Gallery)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    # method -> output name (plan.outputs) -> what it wrote (camlens.pipeline.outputs)
    written: dict[str, dict[str, Any]] = field(default_factory=dict)


def prepare_plan(model: nn.Module, plan: ExplainPlan, image_size: int) -> ExplainPlan:
    """`plan` with its layers resolved (`choose_layers`) and checked against `model`: what a
    job does once, before any work; the steps after it trust the plan. The counterfactual
    test's default is decided here for the data's size, and said in one line when off."""
    plan = replace(plan, layers=choose_layers(model, plan.layers, image_size)).check(model)
    if plan.counterfactual is None and not plan.counterfactual_on(image_size) and is_writer():
        print(
            f"counterfactual test: off by default above {COUNTERFACTUAL_MAX_SIDE} px (these "
            f"images are {image_size} px, where it costs several times the maps): "
            "--counterfactual runs it",
            file=sys.stderr,
        )
    return replace(plan, counterfactual=plan.counterfactual_on(image_size))


def write_galleries(
    model: nn.Module,
    data: Dataset,
    out: str | Path,
    plan: ExplainPlan | None = None,
    *,
    mistakes: Mistakes | None = None,
    config: GalleryConfig | None = None,
    counterfactual_config: CounterfactualConfig | None = None,
    checked: bool = False,
) -> Galleries:
    """Explain the chosen mistakes of `data.test` (the plan's filter, sort and limit) with each
    of the plan's methods, written by each of `plan.outputs` (the gallery, the maps file).

    `mistakes`: e.g. `read_mistakes(misclassified.csv, data.test)`, whose predictions may be
    TTA's; None: the model's arg-max mistakes. Nothing chosen: nothing is written.
    Streamed: maps are computed, drawn and written a chunk at a time (`plan.chunk_size`), so
    memory does not grow with the number of mistakes; a killed call started again over the
    same `out` keeps the cards already written. `plan` None: `ExplainPlan()`; `config`: how
    the gallery is drawn; `counterfactual_config`: the counterfactual test's settings, when
    the plan runs it; `checked`: the caller ran `prepare_plan`.
    """
    plan = plan or ExplainPlan()
    if not checked:
        plan = prepare_plan(model, plan, data.image_size)
    if mistakes is None:
        logits = predict(model, data.test.images, plan.eval_batch_size)
        mistakes = find_mistakes(logits, data.test.labels)
    chosen = select_mistakes(
        mistakes, data.classes, plan.sort, plan.label_name, plan.pred_name, plan.limit
    )
    if chosen.images is None:  # only the chosen photos: every mistake's was 6 GB at 20,000
        chosen = replace(chosen, images=data.test.images[chosen.indices])
    written: dict[str, dict[str, Any]] = {}
    maps: dict[str, Explanations] = {}
    for method in plan.methods if len(chosen) else ():
        chunks = stream_mistake_maps(
            model, chosen, plan, method, counterfactual_config=counterfactual_config
        )
        # under torchrun rank 0 alone writes; every rank explains its share
        names = plan.outputs if is_writer() else ()
        job = OutputJob(Path(out), method, chosen, data.classes, config, plan.progress)
        with ExitStack() as stack:
            opened = {name: stack.enter_context(OUTPUTS[name](job)) for name in names}
            maps[method], written[method] = consume(chunks, opened)
    drawn = {k: w["gallery"] for k, w in written.items() if "gallery" in w}
    return Galleries(
        chosen,
        maps if is_writer() else {},
        {k: g.folder for k, g in drawn.items()},
        {k: g.seconds for k, g in drawn.items()},
        written,
    )


def choose_layers(
    model: nn.Module, layers: Sequence[str] | None, image_size: int
) -> tuple[str, ...]:
    """`layers` checked against the layers a map can be read from (one forward of a dummy
    batch); None: the last of them before the global pooling (`camlens.cam.pick_layer`).
    In a `Classifier` the wrapped model's layers are `model.NAME`; NAME alone finds them."""
    if layers is None:
        try:
            return (pick_layer(model, image_size).name,)
        except ValueError as e:
            raise ExplainError(str(e)) from None
    names = dict(model.named_modules())
    layers = own_layer_names(model, layers)  # a Classifier's model's own names: `layer4` too
    parts = [p for layer in layers for p in layer_parts(layer)]  # "layer3+layer4": each
    unknown = [p for p in parts if not p or p not in names]
    if unknown:
        listed = "; ".join(c.describe() for c in candidate_layers(model, image_size))
        arch = getattr(model, "arch", type(model).__name__)
        raise ExplainError(
            f"no layer named {unknown[0]!r} in {arch}; layers a map can be read "
            f"from (output without the batch): {listed}"
        )
    return tuple(layers)
