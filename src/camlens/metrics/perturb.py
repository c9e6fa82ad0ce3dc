"""Deletion and insertion curves (RISE) and Average Drop / Increase in Confidence (Grad-CAM++).

Deletion (Petsiuk et al. 2018): remove pixels in order of map value, most important first;
the target probability should fall fast: lower AUC is better. Insertion starts from the fully
replaced image and reveals pixels in the same order: higher AUC is better. RISE's substrates
(the default, "rise"): deletion sets pixels to zero in the model's input space (its mean
colour), insertion starts from a blur; "blur", "mean" and "zeros" use one substrate both ways
and are named as such (`deletion_variant`), as their scores are not RISE's. Each curve has
K + 1 points; both share the unperturbed image, and with one substrate the fully replaced one
too, so both curves cost 2K forwards per image (2K + 1 with RISE's two substrates).

Average Drop and Increase in Confidence (Chattopadhay et al. 2018, sec. 5.2): with Y the
probability on the image and O the one on image * map (the map broadcast over channels),
drop = max(0, Y - O) / Y and increase = [Y < O] per image; the paper reports their means x 100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camlens.metrics.config import MetricConfig
from camlens.metrics.core import checked, pixel_ranks, target_probs

__all__ = ["deletion_variant", "drop_increase", "perturbation_curves", "replacement_images"]


VARIANTS = {
    "rise": "RISE: deletion to the model's zero input (its mean colour), insertion from blur",
    "blur": "blur: deletion to and insertion from a Gaussian blur (not RISE's deletion)",
    "mean": "mean: deletion to and insertion from each image's mean colour",
    "zeros": "zeros: deletion to and insertion from black (image units)",
}


def deletion_variant(config: MetricConfig) -> str:
    """What deletion and insertion replace pixels with under `config`, in words."""
    return VARIANTS[config.replacement]


def substrate_images(images: Tensor, config: MetricConfig, model: nn.Module | None) -> Tensor:
    """(N, C, H, W) -> RISE's deletion substrate: the colour that is zero in the model's input."""
    c = images.shape[1]
    colour = config.substrate
    if colour is None:
        mean = getattr(model, "mean", None)
        colour = mean.flatten().tolist() if isinstance(mean, Tensor) and mean.numel() == c else 0
    value = torch.as_tensor(colour, dtype=images.dtype, device=images.device).flatten()
    if value.numel() not in (1, c):
        raise ValueError(f"substrate must give 1 or {c} channel values, got {value.numel()}")
    return value.view(1, -1, 1, 1).expand_as(images).clone()


def replacement_images(
    images: Tensor, config: MetricConfig, which: str = "insertion", model: nn.Module | None = None
) -> Tensor:
    """(N, C, H, W) -> what every pixel becomes once removed for curve `which`.

    "rise": the model's zero input for deletion (`model` gives its mean colour), the blur for
    insertion; the other replacements are the same both ways: blurred, channel mean or zeros.
    """
    if config.replacement == "rise" and which == "deletion":
        return substrate_images(images, config, model)
    if config.replacement == "zeros":
        return torch.zeros_like(images)
    if config.replacement == "mean":
        return images.mean((2, 3), keepdim=True).expand_as(images).clone()
    k, sigma = config.blur_kernel, config.blur_sigma
    offsets = torch.arange(k, device=images.device, dtype=images.dtype) - k // 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    g = g / g.sum()
    n, c, h, w = images.shape
    # separable Gaussian; replicate padding so that borders are not darkened (RISE pads zeros)
    x = F.pad(images.reshape(n * c, 1, h, w), (k // 2,) * 4, mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, k))
    x = F.conv2d(x, g.view(1, 1, k, 1))
    return x.reshape(n, c, h, w)


def perturbation_curves(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | int,
    config: MetricConfig | None = None,
    probs: Tensor | None = None,
    which: tuple[str, ...] = ("deletion", "insertion"),
) -> dict[str, tuple[Tensor, Tensor]]:
    """name -> ((K+1,) fraction of pixels moved, (N, K+1) target probability) per curve.

    `probs` (N,), the target probability on the unperturbed images (each curve's other end),
    is computed when not given. All perturbed copies of all images go through `target_probs`
    in flat chunks: item f is image f // M at table row f % M; no Python loop runs per image.
    """
    config = config or MetricConfig()
    targets, probs = checked(model, images, maps, targets, config.batch_size, probs)
    if not which or any(c not in ("deletion", "insertion") for c in which):
        raise ValueError(f"which must name 'deletion' and/or 'insertion', got {which}")
    n, _, h, w = images.shape
    hw, k = h * w, config.steps
    counts = [(i * hw) // k for i in range(k + 1)]  # pixels moved after step i
    # table rows: (pixels moved, reveal?); row 0 is the fully replaced image
    rows = [(hw, False)]
    if "deletion" in which:
        rows += [(counts[i], False) for i in range(1, k)]
    if "insertion" in which:
        rows += [(counts[i], True) for i in range(1, k)]
    moved = torch.tensor([r[0] for r in rows], device=images.device)
    reveal = torch.tensor([r[1] for r in rows], device=images.device)
    m = len(rows)
    ranks = pixel_ranks(maps)  # (N, H*W)
    deleted = replacement_images(images, config, "deletion", model)
    inserted = replacement_images(images, config, "insertion", model)
    # the fully replaced row (0) is deletion's last point and insertion's first: under RISE's
    # two substrates each curve needs its own, so row 0 is insertion's and deletion ends on a
    # row of its own
    both = "deletion" in which and "insertion" in which and config.replacement == "rise"
    if both:
        rows.append((hw, False))
        moved = torch.tensor([r[0] for r in rows], device=images.device)
        reveal = torch.tensor([r[1] for r in rows], device=images.device)
        m = len(rows)
    use_deleted = torch.zeros(m, dtype=torch.bool, device=images.device)
    use_deleted[1:] = ~reveal[1:]
    if config.replacement == "rise" and "insertion" not in which:
        use_deleted[0] = True
    last = m - 1 if both else 0

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        flat = torch.arange(start, stop, device=images.device)
        i, row = flat // m, flat % m
        chosen = ranks[i] < moved[row, None]  # (B, H*W): the pixels moved so far
        # deletion replaces the chosen pixels; insertion keeps only them
        replace = (chosen != reveal[row, None]).view(-1, 1, h, w)
        substrate = torch.where(use_deleted[row, None, None, None], deleted[i], inserted[i])
        return torch.where(replace, substrate, images[i]), targets[i]

    got = target_probs(model, n * m, build, config.batch_size).view(n, m)  # (N*M,) -> (N, M)
    x = torch.tensor(counts, dtype=torch.float32, device=images.device) / hw
    curves, col = {}, 1
    if "deletion" in which:
        curves["deletion"] = (
            x,
            torch.cat([probs[:, None], got[:, col : col + k - 1], got[:, last : last + 1]], 1),
        )
        col += k - 1
    if "insertion" in which:
        curves["insertion"] = (
            x,
            torch.cat([got[:, :1], got[:, col : col + k - 1], probs[:, None]], 1),
        )
    return curves


def drop_increase(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | int,
    config: MetricConfig | None = None,
    probs: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(N,) Average Drop term max(0, Y - O) / Y and (N,) Increase term [Y < O], float."""
    config = config or MetricConfig()
    targets, probs = checked(model, images, maps, targets, config.batch_size, probs)

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        return images[start:stop] * maps[start:stop, None], targets[start:stop]

    masked = target_probs(model, images.shape[0], build, config.batch_size)  # O
    # a target already at probability 0 has nothing to drop
    drop = torch.where(probs > 0, (probs - masked).clamp_min(0) / probs.clamp_min(1e-30), 0.0)
    return drop, (masked > probs).float()
