"""Explain the mistakes: pick which to show, then every map they need, in batched passes.

The step between evaluation and the pictures: `select_mistakes` filters and orders the
misclassified images, `explain_mistakes` computes their maps (predicted class, true class and
contrast, per layer). Its `Explanations` feed both the PNG gallery and the HTML report, so this
module draws nothing and imports no picture code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from camlens.cam import METHODS, PRECISIONS, create, find_layer
from camlens.distributed import gather_fields, shard_rows
from camlens.evaluate import Mistakes, as_float_images

__all__ = [
    "SORTS",
    "ExplainError",
    "Explanations",
    "check_explainable",
    "explain_each",
    "explain_mistakes",
    "select_mistakes",
]

SORTS = ("confidence", "margin", "index")


class ExplainError(ValueError):
    """A method, layer, class name, sort or precision that cannot be explained as asked."""


@dataclass(frozen=True)
class Explanations:
    """Maps of the predicted class, the true class and their contrast, per layer, on the CPU.

    Predicted- and label-class maps of one image share a scale ("pair" normalisation), so a
    weak label-class map looks weak; `*_max` keep each raw map's maximum for comparing images.
    """

    method: str
    layers: tuple[str, ...]
    resolutions: tuple[tuple[int, int], ...]  # each layer's native map (h, w)
    pred_cams: Tensor  # (L, M, H, W) in [0, 1]: maps of the predicted classes
    label_cams: Tensor  # (L, M, H, W) in [0, 1]: maps of the true classes
    contrast_cams: Tensor | None  # (L, M, H, W) in [-1, 1]; None for non-linear methods
    pred_max: Tensor  # (L, M)
    label_max: Tensor  # (L, M)
    logits: Tensor  # (M, K)


def check_explainable(
    model: nn.Module,
    methods: Sequence[str],
    layers: Sequence[str],
    precision: str = "fp32",
) -> None:
    """Raise ExplainError, naming what is valid, unless `model` can be explained as asked.

    Cheap: callers check before hours of training rather than after.
    """
    for method in methods:
        if method not in METHODS:
            raise ExplainError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    if not layers:
        raise ExplainError("no layer to explain: name one, e.g. layer4")
    if len(set(layers)) < len(layers):
        raise ExplainError(f"a layer is named twice in {', '.join(layers)}: name each once")
    for layer in layers:
        try:
            find_layer(model, layer)
        except KeyError as e:  # its message lists the model's layer names
            raise ExplainError(e.args[0]) from None
    if precision not in PRECISIONS:
        raise ExplainError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")


def explain_mistakes(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    method: str = "gradcam",
    layers: Sequence[str] = ("layer4",),
    batch_size: int = 64,
    precision: str = "fp32",
    preds: Tensor | None = None,
) -> Explanations:
    """One forward and one partial backward per target set for each chunk of `batch_size`.

    `preds` are the classes the predicted-class maps explain; None: the model's arg-max.
    """
    check_explainable(model, [method], layers, precision)
    device = next(model.parameters()).device
    x = as_float_images(images.to(device))
    with create(
        method, model, list(layers), batch_size=batch_size, normalize="pair", precision=precision
    ) as cam:
        pair = cam.explain_pair(
            x, labels.to(device), preds=None if preds is None else preds.to(device)
        )
    contrast = pair.contrast.layer_cams.cpu() if pair.contrast is not None else None
    return Explanations(
        method=method,
        layers=pair.pred.layers,
        resolutions=pair.pred.resolutions,
        pred_cams=pair.pred.layer_cams.cpu(),
        label_cams=pair.label.layer_cams.cpu(),
        contrast_cams=contrast,
        pred_max=pair.pred.raw_max.cpu(),
        label_max=pair.label.raw_max.cpu(),
        logits=pair.pred.logits.cpu(),
    )


def select_mistakes(
    mistakes: Mistakes,
    classes: Sequence[str],
    sort: str = "confidence",
    label_name: str | None = None,
    pred_name: str | None = None,
    limit: int | None = None,
) -> Mistakes:
    """Filter by true/predicted class name, order (most confident or largest margin first), cut."""
    keep = torch.ones(len(mistakes), dtype=torch.bool)
    for name, column in ((label_name, mistakes.labels), (pred_name, mistakes.preds)):
        if name is not None:
            if name not in classes:
                raise ExplainError(f"unknown class {name!r}: choose from {', '.join(classes)}")
            keep &= column == list(classes).index(name)
    if sort not in SORTS:
        raise ExplainError(f"unknown sort {sort!r}: choose from {', '.join(SORTS)}")
    chosen = mistakes.select(keep.nonzero().flatten())
    key = {"confidence": -chosen.confidence, "margin": -chosen.margins, "index": chosen.indices}
    order = key[sort].argsort(stable=True)
    return chosen.select(order[:limit] if limit is not None else order)


def explain_each(
    model: nn.Module,
    mistakes: Mistakes,
    methods: Sequence[str],
    layers: Sequence[str] = ("layer4",),
    batch_size: int = 64,
    precision: str = "fp32",
) -> dict[str, Explanations]:
    """Each method's maps of `mistakes` (with their images); the predicted-class maps explain
    `mistakes.preds`, the stated predictions (TTA's, from a csv), not the arg-max.

    Under torchrun each rank explains its share, cut at whole batches, and every rank gets all
    the maps, in order (camlens.distributed)."""
    rows, count = shard_rows(len(mistakes), batch_size)
    mine = mistakes.select(rows)
    return {
        method: gather_fields(
            explain_mistakes(
                model, mine.images, mine.labels, method, layers, batch_size, precision,
                preds=mine.preds,
            ),
            MISTAKE_DIMS,
            count,
        )
        for method in (methods if len(mistakes) else ())
    }


# where each Explanations tensor lists the mistakes: the dimension gathered across ranks
MISTAKE_DIMS = {
    "pred_cams": 1,
    "label_cams": 1,
    "contrast_cams": 1,
    "pred_max": 1,
    "label_max": 1,
    "logits": 0,
}
