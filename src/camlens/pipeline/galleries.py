"""The gallery step: pick the mistakes, explain them chunk by chunk, draw a gallery per method.

write_galleries(model, data, out, ...) -> Galleries
load_matching_data(source, meta) -> Dataset   the data a checkpoint was trained on
choose_layers(model, layers, image_size)      --layer checked; None: the last before pooling
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from camlens.cam import candidate_layers, pick_layer
from camlens.classifier import Classifier
from camlens.data import DataError, Dataset, load_dataset
from camlens.distributed import is_writer
from camlens.evaluate import Mistakes, find_mistakes, predict
from camlens.explain import (
    ExplainError,
    Explanations,
    check_explainable,
    explain_chunks,
    select_mistakes,
)
from camlens.gallery import GalleryConfig, stream_gallery

__all__ = ["LAYERS", "Galleries", "choose_layers", "load_matching_data", "write_galleries"]

LAYERS = ("layer3", "layer4")


@dataclass(frozen=True)
class Galleries:
    """What `write_galleries` explained and where it drew it."""

    mistakes: Mistakes  # the mistakes explained, with their images, in gallery order
    explanations: dict[str, Explanations]  # method -> maps of `mistakes` (native resolution)
    folders: dict[str, Path]  # method -> its gallery folder, out/gallery/<method>
    # method -> seconds of maps, drawing, encoding, writing (see camlens.gallery.Gallery)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)


def load_matching_data(source: str | Path, meta: dict, *, progress: bool = True) -> Dataset:
    """The data a checkpoint is evaluated on must have the classes it was trained on."""
    data = load_dataset(source, image_size=int(meta["image_size"]), progress=progress)
    if list(data.classes) != list(meta["classes"]):
        raise DataError(
            f"{source} has classes {list(data.classes)}, but the checkpoint was trained on "
            f"{meta['classes']}: pass the data it was trained on"
        )
    return data


def write_galleries(
    model: nn.Module,
    data: Dataset,
    out: str | Path,
    *,
    mistakes: Mistakes | None = None,
    sort: str = "confidence",
    label_name: str | None = None,
    pred_name: str | None = None,
    limit: int | None = None,
    methods: Sequence[str] = ("gradcam",),
    layers: Sequence[str] = LAYERS,
    cam_batch_size: int = 64,
    eval_batch_size: int = 64,
    precision: str = "fp32",
    config: GalleryConfig | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Galleries:
    """Explain the chosen mistakes of `data.test` with each method; one gallery per method.

    `mistakes`: e.g. `read_mistakes(misclassified.csv, data.test)`, whose predictions may be
    TTA's; None: the model's arg-max mistakes. Nothing chosen: nothing is written.
    Streamed: maps are computed, drawn and written `chunk_size` mistakes at a time (default
    `cam_batch_size`), so memory does not grow with the number of mistakes; a killed call
    started again over the same `out` keeps the cards already written.
    """
    check_explainable(model, methods, layers, precision)
    if mistakes is None:
        logits = predict(model, data.test.images, eval_batch_size)
        mistakes = find_mistakes(logits, data.test.labels)
    if mistakes.images is None:
        mistakes = replace(mistakes, images=data.test.images[mistakes.indices])
    chosen = select_mistakes(mistakes, data.classes, sort, label_name, pred_name, limit)
    drawn = {}
    for method in methods if len(chosen) else ():
        chunks = explain_chunks(
            model, chosen, method, layers, cam_batch_size, precision, chunk_size
        )
        if not is_writer():  # under torchrun rank 0 alone draws; every rank explains its share
            for _ in chunks:
                pass
            continue
        drawn[method] = stream_gallery(
            chunks, chosen, method, data.classes, out, config, progress=progress
        )
    return Galleries(
        chosen,
        {k: g.explanations for k, g in drawn.items()},
        {k: g.folder for k, g in drawn.items()},
        {k: g.seconds for k, g in drawn.items()},
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
    if isinstance(model, Classifier):  # the model's own names work too: `layer4`, not only
        layers = [f"model.{n}" if n not in names and f"model.{n}" in names else n for n in layers]
    unknown = [layer for layer in layers if not layer or layer not in names]
    if unknown:
        listed = "; ".join(c.describe() for c in candidate_layers(model, image_size))
        arch = getattr(model, "arch", type(model).__name__)
        raise ExplainError(
            f"no layer named {unknown[0]!r} in {arch}; layers a map can be read "
            f"from (output without the batch): {listed}"
        )
    return tuple(layers)
