"""Normalisation of a call's maps (`CamConfig.normalize`).

"minmax" per map (default): min-max into [0, 1], for the shape of each map on its own.
"none": raw. "batch" (one scale for the whole call) and "pair" (one scale per image across the
target sets of one call, e.g. predicted and true class side by side) divide unsigned maps by the
group's largest value, with a floor of 0: a shown value is raw / shared max, so a map whose raw
peak is 0.7 of its partner's shows a peak of 0.7. Subtracting a shared minimum instead would
push the weaker map down whenever no map of the group reaches zero (1.0 and 0.7 -> 1.0 and 0.4).
Signed maps are scaled by their (shared) max |value| into [-1, 1] instead, never shifted or
rectified. An unsigned map that is constant (no place stands out) or all zero comes out as zeros
in every mode but "none", and sets no shared scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["NORMALIZE", "normalize_maps"]

NORMALIZE = ("minmax", "none", "batch", "pair")


def normalize_maps(maps: Sequence[Tensor], mode: str, signed: bool) -> list[Tensor]:
    """Scale a group of (N, H, W) maps; "pair" shares one scale per image across the group.

    Unsigned maps: "minmax" into [0, 1] per map; "batch" and "pair" divided by the shared
    maximum (floor 0). Signed maps: divided by their max |value| into [-1, 1], so that zero
    stays zero for a diverging colormap. A map whose range is zero or only rounding noise, and a
    group with nothing above zero, come out as zeros, never NaN.
    """
    if mode == "none":
        return list(maps)
    stack = torch.stack(list(maps))  # S x (N, H, W) -> (S, N, H, W)
    dims = {"minmax": (2, 3), "batch": (1, 2, 3), "pair": (0, 2, 3)}[mode]
    tiny = torch.finfo(stack.dtype).eps * 8
    if signed:
        scale = stack.abs().amax(dims, keepdim=True)
        out = torch.where(scale > 0, stack / scale.clamp_min(tiny), torch.zeros_like(stack))
        return list(out.unbind(0))
    lo, hi = stack.amin((2, 3), keepdim=True), stack.amax((2, 3), keepdim=True)  # (S, N, 1, 1)
    flat = hi - lo <= tiny * torch.maximum(hi.abs(), lo.abs())
    if mode == "minmax":
        out = (stack - lo) / (hi - lo).clamp_min(1e-30)
    else:
        # flat maps first become zeros, so that they set no scale for the others
        kept = torch.where(flat, 0.0, stack.clamp_min(0))
        out = kept / kept.amax(dims, keepdim=True).clamp_min(1e-30)
    return list(torch.where(flat, 0.0, out).unbind(0))
