"""What a map explains: target specs, their checks, and their resolution against logits.

Targets (`targets=` of every call; one "target set" gives one map per image):
    None                 the predicted class
    tensor / list / int  a class index per image (an int means the same class for all)
    Target(a, versus=b) the signed map of logit[a] - logit[b] ("why a rather than b"; a None:
                         the prediction); methods linear in the gradients only (gradcam,
                         hirescam, xgradcam, cam). Target(a) alone is the same as a.
    callable(logits)     returns class indices (integer tensor (N,)) or scores (float (N,))

A spec is checked twice: `prepare_target` before any forward pass (counts, dtypes, whether the
method allows a contrast), `resolve_target` per chunk once its logits are known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Resolved",
    "Target",
    "TargetSpec",
    "prepare_target",
    "resolve_target",
    "slice_spec",
]


@dataclass(frozen=True)
class Target:
    """What a map explains: `logit[indices]`, minus `logit[versus]` when given (a signed map).

    `indices` None is the predicted class; e.g. Target(preds, versus=labels) shows "why the
    prediction rather than the label".
    """

    indices: Any = None
    versus: Any = None


TargetSpec = None | int | Sequence[int] | Tensor | Target | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Resolved:
    """One resolved target set for one chunk, as `_map` sees it."""

    indices: Tensor | None  # (N,) classes explained; None for a score callable
    versus: Tensor | None  # (N,) the subtracted class of a contrast, else None
    scores: Tensor | None  # (N,) the differentiated scores (in the graph); None without grads

    @property
    def signed(self) -> bool:
        return self.versus is not None


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
    spec: TargetSpec, n: int, device: torch.device, *, linear: bool, method: str
) -> Any:
    """Check counts before any forward pass; indices become (n,) long tensors on `device`."""
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, Target):
        if spec.versus is None:  # a plain target set
            return prepare_target(spec.indices, n, device, linear=linear, method=method)
        if not linear:
            raise ValueError(
                f"contrast targets (Target(..., versus=...)) need a method linear in the target "
                f"score (gradcam, hirescam, xgradcam, cam), not {method}"
            )
        indices = None if spec.indices is None else _as_indices(spec.indices, n, device, "targets")
        return Target(indices, _as_indices(spec.versus, n, device, "Target.versus"))
    return _as_indices(spec, n, device, "targets")


def resolve_target(
    spec: Any, logits: Tensor, want_scores: bool, *, needs_indices: bool, method: str
) -> Resolved:
    """Turn a prepared spec into class indices (and scores) given this chunk's logits."""
    n, k = logits.shape
    versus = None
    if spec is None:
        indices = logits.argmax(1)
    elif isinstance(spec, Target):
        indices = logits.argmax(1) if spec.indices is None else spec.indices
        versus = spec.versus
        _check_range(versus, k, "Target.versus")
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
    scores = None
    if want_scores:
        # (N, K) -> (N,) the explained score; float32 so that a bf16 sum does not round
        scores = logits.gather(1, indices[:, None])[:, 0].float()
        if versus is not None:
            scores = scores - logits.gather(1, versus[:, None])[:, 0].float()
    return Resolved(indices, versus, scores)


def slice_spec(spec: Any, start: int, stop: int) -> Any:
    """The part of a prepared spec that belongs to images[start:stop]."""
    if isinstance(spec, Tensor):
        return spec[start:stop]
    if isinstance(spec, Target):
        indices = None if spec.indices is None else spec.indices[start:stop]
        return Target(indices, spec.versus[start:stop])
    return spec
