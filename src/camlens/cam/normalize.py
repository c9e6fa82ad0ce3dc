"""Normalisation of a call's maps (`CamConfig.normalize`).

"minmax" per map (default), "none" (raw), "batch" (one scale for the whole call), "pair" (one
scale per image across the target sets of one call, e.g. predicted and true class side by side).
Signed maps are scaled by their max |value| into [-1, 1] instead, never shifted or rectified. A
constant or all-zero map comes out as zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["NORMALIZE", "normalize_cams"]

NORMALIZE = ("minmax", "none", "batch", "pair")


def normalize_cams(maps: Sequence[Tensor], mode: str, signed: bool) -> list[Tensor]:
    """Scale a group of (N, H, W) maps; "pair" shares one scale per image across the group.

    Unsigned maps are min-max scaled into [0, 1]; signed ones divided by their max |value| into
    [-1, 1], so that zero stays zero for a diverging colormap. A map whose range is zero or only
    rounding noise comes out as zeros, never NaN.
    """
    if mode == "none":
        return list(maps)
    stack = torch.stack(list(maps))  # S x (N, H, W) -> (S, N, H, W)
    dims = {"minmax": (2, 3), "batch": (1, 2, 3), "pair": (0, 2, 3)}[mode]
    tiny = torch.finfo(stack.dtype).eps * 8
    if signed:
        scale = stack.abs().amax(dims, keepdim=True)
        out = torch.where(scale > 0, stack / scale.clamp_min(tiny), torch.zeros_like(stack))
    else:
        lo, hi = stack.amin(dims, keepdim=True), stack.amax(dims, keepdim=True)
        span = hi - lo
        flat = span <= tiny * torch.maximum(hi.abs(), lo.abs())
        out = torch.where(flat, 0.0, (stack - lo) / span.clamp_min(1e-30))
    return list(out.unbind(0))
