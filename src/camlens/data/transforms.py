"""Batched tensor transforms for training: augmentation, statistics, subsets.

Everything works on a whole batch on the batch's own device with one random generator, so the
training hot path has no per-image Python loop and a seed fixes every crop, flip and hole. The
draws (a few numbers per image) come from the generator's device, the CPU's in training, and are
moved: a run draws the same augmentation on any device.
"""

from __future__ import annotations

import torch

from camlens.choices import PADDINGS

__all__ = [
    "PADDINGS",
    "augment",
    "random_crop",
    "random_flip",
    "cutout",
    "channel_stats",
    "balanced_subset",
]


def random_crop(
    images: torch.Tensor, pad: int, generator: torch.Generator, padding: str = "zeros"
) -> torch.Tensor:
    """Pad by `pad` and crop back at a random offset per image (the seed's RandomCrop).

    `padding` "zeros" fills the border with black (the seed's), "reflect" mirrors the image
    into it (no edge where the photo ends).
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    n, c, h, w = images.shape
    mode = "constant" if padding == "zeros" else padding
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode=mode)  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=generator.device, generator=generator).to(
        images.device
    )
    dx = torch.randint(0, 2 * pad + 1, (n,), device=generator.device, generator=generator).to(
        images.device
    )
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]  # (N, C, H, W)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror half of the images left-right."""
    flip = torch.rand(images.shape[0], device=generator.device, generator=generator)
    flip = flip.to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image, centred anywhere (DeVries & Taylor 2017).

    The centre may lie near the border so the hole is sometimes partly outside, as in the paper.
    """
    n, _, h, w = images.shape
    cy = torch.randint(0, h, (n,), device=generator.device, generator=generator).to(images.device)
    cx = torch.randint(0, w, (n,), device=generator.device, generator=generator).to(images.device)
    r = torch.arange(h, device=images.device)
    c = torch.arange(w, device=images.device)
    in_rows = (r[None] >= (cy - size // 2)[:, None]) & (r[None] < (cy + (size + 1) // 2)[:, None])
    in_cols = (c[None] >= (cx - size // 2)[:, None]) & (c[None] < (cx + (size + 1) // 2)[:, None])
    hole = in_rows[:, :, None] & in_cols[:, None, :]  # (N, H) x (N, W) -> (N, H, W)
    return images.masked_fill(hole[:, None], 0)


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    crop: bool = True,
    flip: bool = True,
    cut: bool = True,
    pad: int = 4,
    cutout_size: int = 8,
    padding: str = "zeros",
) -> torch.Tensor:
    """The seed project's augmentation, batchwise: crop with padding, flip, cutout."""
    if crop:
        images = random_crop(images, pad, generator, padding)
    if flip:
        images = random_flip(images, generator)
    if cut:
        images = cutout(images, cutout_size, generator)
    return images


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 `images` (N, 3, H, W) in [0, 1] units, in float64."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / 255
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def balanced_subset(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first images of each class, n in all, as evenly spread as n allows."""
    classes = labels.unique(sorted=True)
    per_class = [
        n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))
    ]
    picked = []
    for cls, k in zip(classes.tolist(), per_class, strict=False):
        picked.append((labels == cls).nonzero().flatten()[:k])
    return torch.cat(picked).sort().values
