"""What a map explains: target specs, their checks, and their resolution against logits.

Targets (`targets=` of every call; one "target set" gives one map per image):
    None                 the predicted class
    tensor / list / int  a class index per image (an int means the same class for all)
    Target(a, versus=b) the signed map of logit[a] - logit[b] ("why a rather than b"; a None:
                         the prediction); methods linear in the gradients only (gradcam,
                         hirescam, xgradcam, cam). Target(a) alone is the same as a.
    Target(a, versus=Similar(k), weight=g, signed=False)
                         logit[a] - g * sum_j w_j logit[d_j] over the k classes d_j whose logits
                         are nearest a's, w_j their softmax probabilities renormalised over the
                         k (Finer-CAM); versus may also be an (N, k) tensor of classes. An
                         unsigned target is rectified like a plain one, so every method that
                         differentiates a score takes it; a signed one needs a linear method.
    callable(logits)     returns class indices (integer tensor (N,)) or scores (float (N,))

A spec is checked twice: `prepare_target` before any forward pass (counts, dtypes, whether the
method allows a contrast), `resolve_target` per chunk once its logits are known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Resolved",
    "Similar",
    "Target",
    "TargetSpec",
    "prepare_target",
    "resolve_target",
    "slice_spec",
]


@dataclass(frozen=True)
class Target:
    """What a map explains: `logit[indices]`, minus `weight` x `logit[versus]` when given.

    `indices` None is the predicted class; e.g. Target(preds, versus=labels) shows "why the
    prediction rather than the label" (a signed map). Several versus classes (an (N, k)
    tensor, or `Similar(k)`) are weighted by their softmax probabilities renormalised over the
    k; `signed=False` rectifies the map like a plain one (Finer-CAM).
    """

    indices: Any = None
    versus: Any = None  # (N,) classes, (N, k) classes, Similar(k), or None
    weight: float = 1.0  # g: how much of the versus score is subtracted
    signed: bool = True  # False: the map is rectified like a plain target's (Finer-CAM)


@dataclass(frozen=True)
class Similar:
    """`Target.versus`: per image, the k classes whose logits are nearest the explained one's."""

    k: int = 3

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"Similar(k) needs k >= 1, got {self.k}")


TargetSpec = None | int | Sequence[int] | Tensor | Target | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Resolved:
    """One resolved target set for one chunk, as `_map` sees it."""

    indices: Tensor | None  # (N,) classes explained; None for a score callable
    versus: Tensor | None  # (N,) or (N, k) the subtracted classes of a contrast, else None
    scores: Tensor | None  # (N,) the differentiated scores (in the graph); None without grads
    weights: Tensor | None = None  # like versus: each subtracted class's weight (g w_j)
    signed: bool = False  # a signed contrast map: never rectified

    def rows(self, table: Tensor) -> Tensor:
        """(K, ...) per-class rows -> (N, ...) row[indices] - sum_j weights_j row[versus_j]."""
        rows = table[self.indices]
        if self.versus is None:
            return rows
        versus = self.versus if self.versus.ndim == 2 else self.versus[:, None]  # (N, k)
        weights = self.weights.view(versus.shape).to(table.dtype)
        extra = (1,) * (table.ndim - 1)
        return rows - (weights.view(*versus.shape, *extra) * table[versus]).sum(1)

    def score(self, logits: Tensor) -> Tensor:
        """(..., N, K) logits -> (..., N) the explained score, float32 (see `rows`)."""
        logits = logits.float()
        lead = logits.shape[:-1]
        score = logits.gather(-1, self.indices.expand(lead)[..., None])[..., 0]
        if self.versus is None:
            return score
        versus = self.versus if self.versus.ndim == 2 else self.versus[:, None]  # (N, k)
        weights = self.weights.view(versus.shape)
        others = logits.gather(-1, versus.expand(*lead, versus.shape[1]))  # (..., N, k)
        return score - (weights * others).sum(-1)


def _as_indices(value: Any, n: int, device: torch.device, what: str) -> Tensor:
    t = torch.as_tensor(value, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must be integer class indices, got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(n)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(
            f"{what} has {t.shape[0] if t.ndim == 1 else tuple(t.shape)} entries but the batch "
            f"has {n} images: give one class per image"
        )
    return t.long()


def _check_range(t: Tensor, k: int, what: str) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
        raise ValueError(
            f"{what} must be class indices in [0, {k}); got values {int(t.min())}..{int(t.max())}"
        )


def prepare_target(
    spec: TargetSpec,
    n: int,
    device: torch.device,
    *,
    linear: bool,
    method: str,
    needs_indices: bool = False,
) -> Any:
    """Check counts before any forward pass; indices become (n,) long tensors on `device`."""
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, Target):
        if spec.versus is None:  # a plain target set
            return prepare_target(spec.indices, n, device, linear=linear, method=method)
        if spec.signed and not linear:
            raise ValueError(
                f"contrast targets (Target(..., versus=...)) need a method linear in the target "
                f"score (gradcam, hirescam, xgradcam, cam), not {method}: pass signed=False "
                "for a rectified map of the same score"
            )
        if needs_indices and not linear:
            raise ValueError(f"{method} explains one class per image, not a score minus others")
        indices = None if spec.indices is None else _as_indices(spec.indices, n, device, "targets")
        versus = spec.versus
        if not isinstance(versus, Similar):
            versus = torch.as_tensor(versus, device=device)
            if versus.ndim == 2:  # (N, k): each image's classes, columns checked one by one
                columns = [_as_indices(v, n, device, "Target.versus") for v in versus.T]
                versus = torch.stack(columns, 1)
            else:
                versus = _as_indices(versus, n, device, "Target.versus")
        return Target(indices, versus, spec.weight, spec.signed)
    return _as_indices(spec, n, device, "targets")


def resolve_target(
    spec: Any, logits: Tensor, want_scores: bool, *, needs_indices: bool, method: str
) -> Resolved:
    """Turn a prepared spec into class indices (and scores) given this chunk's logits."""
    n, k = logits.shape
    versus = weights = None
    signed = False
    if spec is None:
        indices = logits.argmax(1)
    elif isinstance(spec, Target):
        indices = logits.argmax(1) if spec.indices is None else spec.indices
        _check_range(indices, k, "targets")
        versus, signed = spec.versus, spec.signed
        if isinstance(versus, Similar):
            versus = _similar(logits, indices, min(versus.k, k - 1))
        _check_range(versus, k, "Target.versus")
        weights = torch.full(versus.shape, float(spec.weight), device=logits.device)
        if versus.ndim == 2:
            # the official Finer-CAM target: the references' softmax probabilities, renormalised
            # over the k; constants (not differentiated), so the map stays linear in the logits
            probs = logits.detach().float().softmax(1).gather(1, versus)  # (N, K) -> (N, k)
            weights = weights * probs / probs.sum(1, keepdim=True).clamp_min(1e-30)
    elif isinstance(spec, Tensor):
        indices = spec
    else:
        out = spec(logits)
        if not isinstance(out, Tensor) or out.shape != (n,):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"a targets callable must return shape ({n},), got {got}")
        if out.is_floating_point():
            if not want_scores and needs_indices:
                raise ValueError(f"{method} needs class indices, not scores, as targets")
            return Resolved(None, None, out.float() if want_scores else None)
        indices = out.long()
    _check_range(indices, k, "targets")
    resolved = Resolved(indices, versus, None, weights, signed)
    if want_scores:
        # (N, K) -> (N,) the explained score; float32 so that a bf16 sum does not round
        resolved = replace(resolved, scores=resolved.score(logits))
    return resolved


def _similar(logits: Tensor, indices: Tensor, k: int) -> Tensor:
    """(N, k) per image the k other classes whose logits are nearest logit[indices]."""
    logits = logits.detach().float()
    distance = (logits - logits.gather(1, indices[:, None])).abs()  # (N, K)
    distance.scatter_(1, indices[:, None], float("inf"))  # never the explained class itself
    return distance.topk(k, dim=1, largest=False).indices


def slice_spec(spec: Any, start: int, stop: int) -> Any:
    """The part of a prepared spec that belongs to images[start:stop]."""
    if isinstance(spec, Tensor):
        return spec[start:stop]
    if isinstance(spec, Target):
        indices = None if spec.indices is None else spec.indices[start:stop]
        versus = spec.versus if isinstance(spec.versus, Similar) else spec.versus[start:stop]
        return replace(spec, indices=indices, versus=versus)
    return spec
