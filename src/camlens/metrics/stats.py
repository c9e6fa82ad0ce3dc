"""Intervals for a mean over images: the percentile bootstrap (Efron 1979)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from camlens.metrics.core import make_generator

__all__ = ["bootstrap_ci"]


def bootstrap_ci(
    values: Tensor,
    n_boot: int = 2000,
    level: float = 0.95,
    generator: torch.Generator | None = None,
) -> tuple[float, float, float]:
    """(mean, low, high) of (n,) per-image values: the percentile bootstrap interval of the mean.

    NaN values (an undefined ARCC) are left out; no values at all give three NaNs. To compare a
    method with a baseline on the same images, pass the per-image differences: the pairing
    removes the spread between images and gives a much narrower interval.
    """
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot} and {level}")
    values = values.detach().flatten().double().cpu()
    values = values[~torch.isnan(values)]
    n = values.numel()
    if n == 0:
        return (math.nan, math.nan, math.nan)
    g = make_generator(generator, 0)
    means = []
    for start in range(0, n_boot, 256):  # blocks of resamples bound the memory to 256 x n
        draws = torch.randint(n, (min(256, n_boot - start), n), generator=g, device=g.device)
        means.append(values[draws.cpu()].mean(1))  # (B, n) -> (B,)
    means = torch.cat(means)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return (float(values.mean()), float(low), float(high))
