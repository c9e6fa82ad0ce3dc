"""Colour CAMs and blend them onto images, batched: float tensors in, uint8 tensors out.

    colorize(maps, colormap=None, signed=False) -> (N, H, W, 3) uint8
    overlay(images, maps, alpha=0.5, colormap=None, size=None, signed=False) -> (N, S, S, 3) uint8
    enlarge(images, size=None) -> (N, S, S, 3) uint8, the image alone at display size
    heatmap_rgba(maps, colormap=None, size=None, signed=False, opacity=1.0) -> (N, S, S, 4) uint8
    colormap_table(name) -> (256, 3) float32 lookup table, read once from matplotlib
    COLORMAPS: the maps camlens uses ("jet", "turbo", "viridis", "inferno"; diverging "RdBu_r",
    "coolwarm"); any matplotlib colormap name works.

`maps` are in [0, 1], or in [-1, 1] with `signed=True` (contrast maps, see camlens.cam), where
zero lands on the diverging colormap's neutral middle. `colormap=None` picks "jet", or "RdBu_r"
when signed. `size` (an int or (H, W)) upscales for display: nearest for the image, so that
each of its pixels stays a sharp block, bilinear for the map, which is smooth by nature. The
output stays a tensor on the inputs' device; turning it into PNG bytes is the caller's edge.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["COLORMAPS", "colorize", "colormap_table", "enlarge", "heatmap_rgba", "overlay"]

COLORMAPS = ("jet", "turbo", "viridis", "inferno", "RdBu_r", "coolwarm")
LEVELS = 256  # entries of a lookup table, as in matplotlib's own colormaps


@lru_cache(maxsize=32)
def colormap_table(name: str) -> Tensor:
    """(256, 3) float32 RGB in [0, 1] sampled from matplotlib's colormap `name`."""
    from matplotlib import colormaps  # imported here: only colouring needs matplotlib

    if name not in colormaps:
        raise ValueError(f"unknown colormap {name!r}; camlens uses {', '.join(COLORMAPS)}")
    rgba = colormaps[name].resampled(LEVELS)(range(LEVELS))  # (256, 4) numpy float64
    return torch.tensor(rgba[:, :3], dtype=torch.float32, device="cpu")  # cached: never meta, cuda


def _size(size: int | tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def _check_maps(maps: Tensor) -> None:
    if not isinstance(maps, Tensor) or maps.ndim != 3 or not maps.is_floating_point():
        got = (maps.dtype, tuple(maps.shape)) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a float (N, H, W) tensor, got {got}")


def _colors(maps: Tensor, colormap: str | None, signed: bool) -> Tensor:
    """(N, H, W) maps -> (N, H, W, 3) float colours in [0, 1]."""
    table = colormap_table(colormap or ("RdBu_r" if signed else "jet")).to(maps.device)
    unit = (maps.float().clamp(-1, 1) + 1) / 2 if signed else maps.float().clamp(0, 1)
    index = (unit.nan_to_num(0.0) * (LEVELS - 1)).round().long()  # (N, H, W) in [0, 255]
    # the same lookup as table[index], 3x faster: embedding is torch's tuned row gather
    return F.embedding(index, table)  # (N, H, W) -> (N, H, W, 3)


def _resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(maps.shape[-2:]) == size:
        return maps.float()
    # (N, h, w) -> (N, H, W): bilinear, because a map is a smooth field, not pixel blocks
    return F.interpolate(maps.float()[:, None], size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def colorize(maps: Tensor, colormap: str | None = None, signed: bool = False) -> Tensor:
    """(N, H, W) maps -> (N, H, W, 3) uint8 colours of `colormap`."""
    _check_maps(maps)
    return _to_uint8(_colors(maps, colormap, signed))


def overlay(
    images: Tensor,
    maps: Tensor,
    alpha: float = 0.5,
    colormap: str | None = None,
    size: int | tuple[int, int] | None = None,
    signed: bool = False,
) -> Tensor:
    """Blend coloured maps onto images: (1 - alpha) * image + alpha * colour, (N, S, S, 3) uint8.

    `images` (N, 3, H, W) float in [0, 1] (uint8 is read as 0..255); `maps` (N, h, w) at any
    resolution. alpha 0 gives the image, alpha 1 the coloured map.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, 3, H, W) tensor, got {got}")
    _check_maps(maps)
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps for {images.shape[0]} images")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out_size = _size(size, tuple(images.shape[-2:]))
    pixels = _enlarge(images, out_size)  # (N, S, S, 3) float
    colors = _colors(_resize_maps(maps, out_size), colormap, signed)  # (N, S, S, 3)
    return _to_uint8((1 - alpha) * pixels + alpha * colors)


def _enlarge(images: Tensor, size: tuple[int, int]) -> Tensor:
    pixels = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if tuple(pixels.shape[-2:]) != size:
        # nearest: each source pixel becomes a sharp block, which is what a 32 px image is
        pixels = F.interpolate(pixels, size=size, mode="nearest-exact")
    return pixels.permute(0, 2, 3, 1)  # (N, 3, S, S) -> (N, S, S, 3)


def enlarge(images: Tensor, size: int | tuple[int, int] | None = None) -> Tensor:
    """The images alone for display, (N, S, S, 3) uint8, enlarged with sharp pixel blocks."""
    return _to_uint8(_enlarge(images, _size(size, tuple(images.shape[-2:]))))


def heatmap_rgba(
    maps: Tensor,
    colormap: str | None = None,
    size: int | tuple[int, int] | None = None,
    signed: bool = False,
    opacity: float = 1.0,
) -> Tensor:
    """The map alone as (N, S, S, 4) uint8 RGBA, transparent where the map is 0 (for PNG).

    Alpha is the map's value (|value| when signed) times `opacity`.
    """
    _check_maps(maps)
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    resized = _resize_maps(maps, _size(size, tuple(maps.shape[-2:])))
    colors = _colors(resized, colormap, signed)  # (N, S, S, 3)
    strength = resized.abs().clamp(0, 1) if signed else resized.clamp(0, 1)
    rgba = torch.cat([colors, (strength * opacity)[..., None]], dim=-1)  # -> (N, S, S, 4)
    return _to_uint8(rgba.nan_to_num(0.0))
