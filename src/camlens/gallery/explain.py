"""Explain the mistakes: pick which to show, then every map a card needs in batched passes.

Kept apart from the drawing so the report can reuse the same maps without PIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from camlens.cam import create
from camlens.evaluate import Mistakes, as_float_images

__all__ = ["SORTS", "Explanations", "explain_mistakes", "select_mistakes"]

SORTS = ("confidence", "margin", "index")


@dataclass(frozen=True)
class Explanations:
    """Maps of the predicted class, the true class and their contrast, per layer, on the CPU.

    Predicted and true maps of one image share a scale ("pair" normalisation), so a weak
    true-class map looks weak; `*_max` keep each raw map's maximum for comparing across images.
    """

    method: str
    layers: tuple[str, ...]
    resolutions: tuple[tuple[int, int], ...]  # each layer's native map (h, w)
    pred: Tensor  # (L, M, H, W) in [0, 1]
    true: Tensor  # (L, M, H, W) in [0, 1]
    contrast: Tensor | None  # (L, M, H, W) in [-1, 1]; None for non-linear methods
    pred_max: Tensor  # (L, M)
    true_max: Tensor  # (L, M)
    logits: Tensor  # (M, K)


def explain_mistakes(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    method: str = "gradcam",
    layers: Sequence[str] = ("layer4",),
    batch_size: int = 64,
    amp: torch.dtype | None = None,
    preds: Tensor | None = None,
) -> Explanations:
    """One forward and one partial backward per target set for each chunk of `batch_size`.

    `preds` are the classes the "predicted" maps explain; None: the model's arg-max.
    """
    device = next(model.parameters()).device
    x = as_float_images(images.to(device))
    with create(
        method, model, list(layers), batch_size=batch_size, normalize="pair", amp=amp
    ) as cam:
        pair = cam.explain_pair(
            x, labels.to(device), preds=None if preds is None else preds.to(device)
        )
    contrast = pair.contrast.layer_cams.cpu() if pair.contrast is not None else None
    return Explanations(
        method=method,
        layers=pair.pred.layers,
        resolutions=pair.pred.resolutions,
        pred=pair.pred.layer_cams.cpu(),
        true=pair.true.layer_cams.cpu(),
        contrast=contrast,
        pred_max=pair.pred.raw_max.cpu(),
        true_max=pair.true.raw_max.cpu(),
        logits=pair.pred.logits.cpu(),
    )


def select_mistakes(
    mistakes: Mistakes,
    classes: Sequence[str],
    sort: str = "confidence",
    true: str | None = None,
    pred: str | None = None,
    limit: int | None = None,
) -> Mistakes:
    """Filter by true/predicted class name, order (most confident or largest margin first), cut."""
    keep = torch.ones(len(mistakes), dtype=torch.bool)
    for name, column in ((true, mistakes.labels), (pred, mistakes.preds)):
        if name is not None:
            if name not in classes:
                raise ValueError(f"unknown class {name!r}: choose one of {', '.join(classes)}")
            keep &= column == classes.index(name)
    chosen = mistakes.select(keep.nonzero().flatten())
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}: choose one of {', '.join(SORTS)}")
    key = {"confidence": -chosen.confidence, "margin": -chosen.margins, "index": chosen.indices}[
        sort
    ]
    order = key.argsort(stable=True)
    return chosen.select(order[:limit] if limit is not None else order)
