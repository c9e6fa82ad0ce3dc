"""Two models on one test split: where their mistakes overlap, and whether their maps agree.

    d = diff_models(model_a, model_b, data, names=("batch norm", "layer norm"))
    d.groups["shared"]            # indices of the images both get wrong, most confident first
    d.agreement["layer4"]["pred"]["spearman"]   # (S,) per shared mistake

For the shared mistakes each model's maps are computed at every layer for two targets: the class
it predicted (what drove its mistake) and the true class (the same target for both, so the
maps are comparable even when the wrong classes differ). Agreement per image is the Spearman
rank correlation of the two maps and the IoU of their top `top` fraction of pixels; a pair
where either map is flat (nothing to rank) is NaN and left out of the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from camlens.cam.renamed import Renamed
from camlens.choices import DEFAULT_LAYERS
from camlens.classifier import adapt_user_input, own_layer_names
from camlens.evaluate import Evaluation, evaluate
from camlens.explain import ExplainError, ExplainPlan, compute_maps
from camlens.metrics import spearman

__all__ = ["GROUPS", "TARGETS", "ModelDiff", "diff_models", "top_iou"]

GROUPS = ("shared", "only_a", "only_b")  # both wrong; only model A wrong; only model B wrong
TARGETS = ("pred", "label")  # the maps compared: each model's predicted class; the true class


@dataclass(frozen=True)
class ModelDiff:
    """What `diff_models` measured; every tensor is on the CPU."""

    names: tuple[str, str]
    classes: tuple[str, ...]
    evaluations: tuple[Evaluation, Evaluation]
    labels: Tensor  # (N,) the split's true classes
    groups: dict[str, Tensor]  # GROUPS -> (M,) split indices, most confident mistake first
    per_class: dict[str, Tensor]  # GROUPS -> (K,) counts by true class
    same_wrong_class: Tensor  # (S,) bool: the shared mistakes where both predict the same class
    layers: tuple[str, ...]
    method: str
    top: float  # the fraction of pixels whose IoU is measured
    # layer -> TARGETS -> metric -> (S,) per shared mistake; NaN where a map is flat
    agreement: dict[str, dict[str, dict[str, Tensor]]]
    maps: dict[str, tuple[Tensor, Tensor]]  # GROUPS -> (A, B) maps of their predictions (G, H, W)
    images: dict[str, Tensor]  # GROUPS -> (G, 3, H, W) uint8: the first `cards` of each group
    cams = Renamed()  # camlens 0.1's name of maps


def top_iou(a: Tensor, b: Tensor, top: float = 0.2) -> Tensor:
    """(N, H, W) x 2 -> (N,) IoU of each pair's `top` fraction of highest pixels (exact counts)."""
    if not 0 < top <= 1:
        raise ValueError(f"top must be a fraction in (0, 1], got {top}")
    flat_a, flat_b = a.flatten(1), b.flatten(1)  # (N, H*W)
    k = max(1, math.ceil(top * flat_a.shape[1]))
    mask_a = torch.zeros_like(flat_a, dtype=torch.bool).scatter_(1, flat_a.topk(k).indices, True)
    mask_b = torch.zeros_like(flat_b, dtype=torch.bool).scatter_(1, flat_b.topk(k).indices, True)
    inter = (mask_a & mask_b).sum(1).float()
    return inter / (mask_a | mask_b).sum(1).float()


def _flat(maps: Tensor) -> Tensor:
    """(N, H, W) -> (N,) True where a map is constant (e.g. Grad-CAM's ReLU left nothing)."""
    flat = maps.flatten(1)
    return flat.amax(1) <= flat.amin(1)


def diff_models(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    classes: Sequence[str] | None = None,
    plan: ExplainPlan | None = None,
    *,
    names: tuple[str, str] = ("A", "B"),
    top: float = 0.2,
    cards: int = 24,
) -> ModelDiff:
    """Evaluate both models on `data`'s test images, group their mistakes, compare their maps.

    `data`: a camlens `Dataset` or `Split`, or the user's own test data as it is (a
    DataLoader or torch Dataset yielding (image, label), `(images, labels)` arrays), both
    models taking it as it comes (see `adapt_user_input`). `classes`: the class names; None:
    the data's own. `plan`: its one method at its layers (None: layer3 and layer4). `cards`:
    images kept per group for the page's galleries (the statistics use all of them).
    Each map is computed once: the shared mistakes' cards reuse the statistics' maps.
    """
    (model_a, model_b), data = adapt_user_input((model_a, model_b), data, classes)
    split, classes = data.test, data.classes
    plan = plan or ExplainPlan()
    method = plan.only_method("diff")
    layers = tuple(own_layer_names(model_a, plan.layers or DEFAULT_LAYERS))
    if cards < 1:
        raise ExplainError(f"--cards must be >= 1, got {cards}: the cards shown per group")
    batch = plan.eval_batch_size
    evs = (evaluate(model_a, split, batch), evaluate(model_b, split, batch))
    for name, ev in zip(names, evs, strict=True):
        if ev.logits.shape[1] != len(classes):
            raise ExplainError(
                f"model {name} has {ev.logits.shape[1]} classes but the data {len(classes)}: "
                "compare models trained on this data"
            )
    labels = split.labels
    preds = [ev.logits.argmax(1).cpu() for ev in evs]
    wrong_a, wrong_b = preds[0] != labels, preds[1] != labels
    conf = torch.stack([ev.logits.float().softmax(1).max(1).values.cpu() for ev in evs])  # (2, N)
    masks = {
        "shared": wrong_a & wrong_b,
        "only_a": wrong_a & ~wrong_b,
        "only_b": ~wrong_a & wrong_b,
    }
    # most confident first: by the erring model's confidence (the larger of the two when shared)
    rank = {"shared": conf.max(0).values, "only_a": conf[0], "only_b": conf[1]}
    groups = {}
    for g, mask in masks.items():
        idx = mask.nonzero().flatten()
        groups[g] = idx[rank[g][idx].argsort(descending=True, stable=True)]
    per_class = {g: torch.bincount(labels[i], minlength=len(classes)) for g, i in groups.items()}

    shared = groups["shared"]
    agreement: dict[str, dict[str, dict[str, Tensor]]] = {
        layer: {t: {} for t in TARGETS} for layer in layers
    }
    if shared.numel():
        images = split.images[shared]
        # per model: [pred maps, label maps], each (L, S, H, W)
        a = compute_maps(model_a, images, [preds[0][shared], labels[shared]], plan, method, layers)
        b = compute_maps(model_b, images, [preds[1][shared], labels[shared]], plan, method, layers)
        for li, layer in enumerate(layers):
            for ti, t in enumerate(TARGETS):
                ma, mb = a[ti][li], b[ti][li]  # (S, H, W) each
                # a flat map ranks nothing: its pair is NaN (left out of the statistics), not 0
                flat = _flat(ma) | _flat(mb)
                nan = torch.tensor(float("nan"))
                agreement[layer][t]["spearman"] = torch.where(flat, nan, spearman(ma, mb))
                agreement[layer][t]["iou"] = torch.where(flat, nan, top_iou(ma, mb, top))
    maps, kept = {}, {}
    for g, idx in groups.items():
        idx = idx[:cards]
        kept[g] = split.images[idx]
        if g == "shared" and shared.numel():  # the statistics' pred maps, last layer: (G, H, W)
            maps[g] = (a[0][-1][: len(idx)], b[0][-1][: len(idx)])
            continue
        pa = compute_maps(model_a, kept[g], [preds[0][idx]], plan, method, layers[-1:])[0][0]
        pb = compute_maps(model_b, kept[g], [preds[1][idx]], plan, method, layers[-1:])[0][0]
        maps[g] = (pa, pb)
    return ModelDiff(
        names=tuple(names),
        classes=tuple(classes),
        evaluations=evs,
        labels=labels,
        groups=groups,
        per_class=per_class,
        same_wrong_class=preds[0][shared] == preds[1][shared],
        layers=tuple(layers),
        method=method,
        top=top,
        agreement=agreement,
        maps=maps,
        images=kept,
    )
