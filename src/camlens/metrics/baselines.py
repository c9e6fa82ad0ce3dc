"""Maps that explain nothing, scored exactly like a method's maps, so a score has a reference.

- "random": a smooth random map, as smooth as the method's own: uniform values drawn at the
  explained layer's native resolution (`resolution`: 4x4 for layer4 and 8x8 for layer3 of the CIFAR
  ResNet at 32 px) and brought to the image's size by the engine's own steps (bilinear upsample,
  min-max normalise), seeded. A map is only as sharp as its layer, so a fair reference for it
  must be no sharper: an i.i.d. per-pixel map removes scattered pixels the model never learned
  to read, and scores a deletion no CAM can match.
- "random-pixel": each pixel uniform in [0, 1], i.i.d. (the old reference, kept by name).
- "centre": a centred Gaussian exp(-d^2 / (2 s^2)) with s a quarter of the shorter side,
  min-max scaled to [0, 1]; the same map for every image (photos tend to centre the object).

For ARCC's coherency a baseline is also a "method" (`baseline_engine`): the random ones draw
fresh maps at every call, as a method that ignores its input would; the centre one returns
its one map whatever the input, so its coherency is 1 by construction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from camlens.cam import normalize_maps
from camlens.cam.layers import upsample
from camlens.choices import BASELINE_KINDS, BASELINES
from camlens.metrics.core import make_generator

__all__ = ["BASELINES", "BASELINE_KINDS", "baseline_engine", "baseline_maps", "default_resolution"]


def default_resolution(height: int, width: int) -> tuple[int, int]:
    """The (h, w) of a stride-8 layer (layer4 of the CIFAR ResNet: 4x4 at 32 px), at least 1x1."""
    return max(1, -(-height // 8)), max(1, -(-width // 8))


def baseline_maps(
    shape: tuple[int, ...] | torch.Size,
    kind: str,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    resolution: tuple[int, int] | None = None,
) -> Tensor:
    """(N, H, W) baseline maps in [0, 1]; `shape` may be the images' (N, C, H, W).

    `resolution`: the explained layer's (h, w) for "random" (default `default_resolution(H, W)`).
    `device` None: the CPU (not torch's default device, which a notebook may have set).
    """
    device = torch.device("cpu") if device is None else device
    if kind not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline {kind!r}: choose one of {', '.join(BASELINE_KINDS)}")
    if len(shape) not in (3, 4):
        raise ValueError(f"shape must be (N, H, W) or (N, C, H, W), got {tuple(shape)}")
    n, h, w = shape[0], shape[-2], shape[-1]
    if kind == "random-pixel":
        g = make_generator(generator, 0)
        return torch.rand((n, h, w), generator=g, device=g.device).to(device)
    if kind == "random":
        gh, gw = resolution or default_resolution(h, w)
        if gh < 1 or gw < 1:
            raise ValueError(f"resolution must be at least 1x1, got {resolution}")
        g = make_generator(generator, 0)
        low = torch.rand((n, gh, gw), generator=g, device=g.device).to(device)  # (N, h, w)
        # (N, h, w) -> (N, H, W): the engine's own upsample and min-max normalisation
        return normalize_maps([upsample(low, (h, w))], "minmax", signed=False)[0]
    ys = torch.arange(h, dtype=torch.float32, device=device) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32, device=device) - (w - 1) / 2
    s = min(h, w) / 4
    d2 = ys[:, None] ** 2 + xs[None, :] ** 2  # (H, W)
    g = torch.exp(-d2 / (2 * s**2))
    g = (g - g.min()) / (g.max() - g.min()).clamp_min(1e-12)
    return g.expand(n, h, w).clone()


def baseline_engine(
    kind: str,
    generator: torch.Generator | None = None,
    resolution: tuple[int, int] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """The baseline as an engine, `(images, targets) -> (N, H, W)`, e.g. for `score_maps`."""
    if kind not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline {kind!r}: choose one of {', '.join(BASELINE_KINDS)}")
    g = make_generator(generator, 1)
    return lambda images, targets: baseline_maps(images.shape, kind, g, images.device, resolution)
