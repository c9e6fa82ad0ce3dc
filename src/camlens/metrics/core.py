"""What every metric shares: checked inputs, batched target probabilities, pixel order, AUC.

The score of an image is the softmax probability of its target class (not the logit), so that
curves of different images and models live on one [0, 1] scale, as in RISE and ROAD.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from camlens.cam import eval_mode

__all__ = [
    "EngineLike",
    "check_inputs",
    "checked",
    "make_generator",
    "normal_noise",
    "pearson",
    "pixel_ranks",
    "target_probs",
    "trapezoid_auc",
]

# what a metric needs of an engine (a camlens.cam.Engine, or the caller's own function):
# (images, targets) -> (N, H, W) maps in [0, 1]
EngineLike = Callable[[Tensor, Tensor], Tensor]

# A chunk of perturbed images and the class each one is scored on, for flat items [start, stop).
Builder = Callable[[int, int], tuple[Tensor, Tensor]]


def check_inputs(images: Tensor, maps: Tensor, targets: Tensor | int) -> Tensor:
    """Shapes and ranges checked before any forward pass; targets as (N,) long on the device."""
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float (N, C, H, W) tensor in [0, 1], got {got}")
    n, _, h, w = images.shape
    if n == 0:
        raise ValueError("images is an empty batch")
    if not isinstance(maps, Tensor) or tuple(maps.shape) != (n, h, w):
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be (N, H, W) = {(n, h, w)} like images, got {got}")
    if maps.device != images.device:
        raise ValueError(f"maps are on {maps.device} but images on {images.device}: move one")
    if not bool(torch.isfinite(maps).all()) or maps.amin() < -1e-6 or maps.amax() > 1 + 1e-6:
        raise ValueError("maps must be finite and in [0, 1]: normalise them (normalize='minmax')")
    targets = torch.as_tensor(targets, device=images.device)
    if targets.ndim == 0:
        targets = targets.expand(n)
    if targets.shape != (n,) or targets.is_floating_point() or bool((targets < 0).any()):
        raise ValueError(
            f"targets must be {n} non-negative class indices, got {tuple(targets.shape)}"
        )
    return targets.long()


def target_probs(model: nn.Module, count: int, build: Builder, batch_size: int) -> Tensor:
    """(count,) softmax probability of each item's target, `batch_size` items per forward."""
    out = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, count, batch_size):
            images, targets = build(start, min(start + batch_size, count))
            logits = model(images)
            if not isinstance(logits, Tensor) or logits.ndim != 2:
                raise TypeError("the model must return (N, K) logits")
            if int(targets.max()) >= logits.shape[1]:
                raise ValueError(
                    f"target class {int(targets.max())} is out of range for "
                    f"{logits.shape[1]} classes: pass targets below {logits.shape[1]}"
                )
            probs = logits.float().softmax(1)  # (B, K)
            out.append(probs.gather(1, targets[:, None])[:, 0])  # (B, K) -> (B,)
    return torch.cat(out)


def checked(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | int,
    batch_size: int,
    probs: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Checked targets, and the (N,) unperturbed probabilities where the caller has none."""
    targets = check_inputs(images, maps, targets)
    if probs is None:

        def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
            return images[start:stop], targets[start:stop]

        probs = target_probs(model, images.shape[0], build, batch_size)
    return targets, probs


def pixel_ranks(maps: Tensor) -> Tensor:
    """(N, H, W) -> (N, H*W) rank of each pixel, 0 = highest map value; ties: lower index first."""
    order = maps.flatten(1).sort(dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=maps.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def trapezoid_auc(x: Tensor, curves: Tensor) -> Tensor:
    """(P,) fractions from 0 to 1 and (N, P) curves -> (N,) area by the trapezoid rule."""
    return torch.trapezoid(curves, x.to(curves), dim=1)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """(N, ...) x 2 -> (N,) correlation per item; 0 where either side is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    norm = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / norm.clamp_min(1e-300)
    return torch.where(norm > 1e-12, r, 0.0).float()


def make_generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    """The caller's generator, or a CPU one seeded with `seed` (results repeat by default)."""
    return generator if generator is not None else torch.Generator().manual_seed(seed)


def normal_noise(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> Tensor:
    """Standard normal draws on the generator's device, moved to `device`."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device)
