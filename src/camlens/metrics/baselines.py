"""Maps that explain nothing, scored exactly like a method's maps, so a score has a reference.

- "random": each pixel uniform in [0, 1], i.i.d., from the generator (seeded by default).
- "centre": a centred Gaussian exp(-d^2 / (2 s^2)) with s a quarter of the shorter side,
  min-max scaled to [0, 1]; the same map for every image (photos tend to centre the object).

For ARCC's coherency a baseline is also a "method" (`baseline_engine`): the random one draws
fresh maps at every call, as a method that ignores its input would; the centre one returns
its one map whatever the input, so its coherency is 1 by construction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from camlens.metrics.core import make_generator

__all__ = ["BASELINES", "baseline_engine", "baseline_maps"]

BASELINES = ("random", "centre")


def baseline_maps(
    shape: tuple[int, ...] | torch.Size,
    kind: str,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(N, H, W) baseline maps in [0, 1]; `shape` may be the images' (N, C, H, W)."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}: choose one of {', '.join(BASELINES)}")
    if len(shape) not in (3, 4):
        raise ValueError(f"shape must be (N, H, W) or (N, C, H, W), got {tuple(shape)}")
    n, h, w = shape[0], shape[-2], shape[-1]
    if kind == "random":
        g = make_generator(generator, 0)
        return torch.rand((n, h, w), generator=g, device=g.device).to(device)
    ys = torch.arange(h, dtype=torch.float32, device=device) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32, device=device) - (w - 1) / 2
    s = min(h, w) / 4
    d2 = ys[:, None] ** 2 + xs[None, :] ** 2  # (H, W)
    g = torch.exp(-d2 / (2 * s**2))
    g = (g - g.min()) / (g.max() - g.min()).clamp_min(1e-12)
    return g.expand(n, h, w).clone()


def baseline_engine(
    kind: str, generator: torch.Generator | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """The baseline as an engine, `(images, targets) -> (N, H, W)`, e.g. for `score_maps`."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}: choose one of {', '.join(BASELINES)}")
    g = make_generator(generator, 1)
    return lambda images, targets: baseline_maps(images.shape, kind, g, images.device)
