"""Intervals for a mean over images: the percentile bootstrap (Efron 1979), and paired tests.

A method is compared with a baseline on the same images by the per-image differences: their
mean, a bootstrap interval with the images resampled jointly for every compared row, and a
decision corrected for the number of rows compared (Holm 1979).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from camlens.metrics.core import make_generator

__all__ = [
    "PAIRED_MIN_IMAGES",
    "TOO_FEW",
    "Paired",
    "bootstrap_ci",
    "holm",
    "paired_bootstrap",
    "paired_decision",
]


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
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64, device=means.device)
    low, high = torch.quantile(means, q)
    return (float(values.mean()), float(low), float(high))


@dataclass(frozen=True)
class Paired:
    """Per row, the mean per-image difference (method - reference) and its bootstrap test."""

    diff: Tensor  # (R,) mean of the per-image differences (NaN left out)
    low: Tensor  # (R,) bootstrap-t interval of that mean at `level`
    high: Tensor  # (R,)
    p: Tensor  # (R,) two-sided bootstrap p-value of "the mean difference is 0"
    p_holm: Tensor  # (R,) the p-values adjusted by Holm's step-down rule over all R rows
    n: Tensor  # (R,) images with a value on both sides


def paired_bootstrap(
    diffs: Tensor,
    n_boot: int = 4000,
    level: float = 0.95,
    generator: torch.Generator | None = None,
    threshold: float | None = None,
) -> Paired:
    """(R, N) per-image differences of R rows on the same N images -> `Paired`.

    Images are resampled jointly for every row (one (B, N) table of draws), so rows stay
    comparable and an image that is hard for every method moves them all together. Interval
    and p-value are the bootstrap-t's (Efron & Tibshirani 1993, ch. 12): each resample's mean
    is studentised by its own standard error, and p is the share of resampled |t| at least the
    observed |t| (+1 over B + 1, a Monte Carlo test's, so never 0). Holm's adjustment makes
    "adjusted p < alpha" hold the chance of any false decision among the R rows to alpha.

    `threshold`: the smallest level a p-value will be compared with, Holm's first, alpha over
    the number of tests in the family (None: (1 - level) / R). A Monte Carlo p-value cannot
    fall below 1 / (B + 1), so the test draws max(n_boot, 20 / threshold) resamples, in blocks,
    for the rows whose p is still small after the first `n_boot` (which the interval reads):
    with 4,000 alone, Holm over 240 cells could never go below 240 / 4,001 = 0.06, and no
    difference, however large, was ever "better".
    """
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot} and {level}")
    if diffs.ndim != 2 or diffs.shape[1] == 0:
        raise ValueError(f"diffs must be (rows, images) with images > 0, got {tuple(diffs.shape)}")
    d = diffs.detach().double().cpu()
    known = ~torch.isnan(d)
    d = torch.where(known, d, 0.0)
    r, n = d.shape
    threshold = (1 - level) / r if threshold is None else threshold
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    n_test = max(n_boot, math.ceil(20 / threshold))
    g = make_generator(generator, 0)
    n_known = known.sum(1)
    diff = torch.where(n_known > 0, d.sum(1) / n_known.clamp_min(1), torch.nan)
    var = ((d - diff[:, None]) ** 2 * known).sum(1) / (n_known - 1).clamp_min(1)
    se = (var / n_known.clamp_min(1)).sqrt()  # (R,)
    tiny = 1e-12 * (d.abs().amax(1) + 1e-30)
    t = diff / se.clamp_min(1e-300)
    means, t_boot = _resampled(d, known, diff, tiny, n_boot, g)  # (B, R) x 2: the interval's
    beyond = (t_boot.abs() >= t.abs()).sum(0)  # NaN compares False
    valid = (~torch.isnan(t_boot)).sum(0)
    # more resamples for the p-values alone, of the rows near the floor: a row with _SETTLED
    # exceedances already has p >= 51 / 4,001 = 0.013 (default n_boot), known to about 14%, so
    # the floor does not bind; it keeps the p of its first n_boot resamples, itself a valid
    # Monte Carlo p-value
    near = (beyond < _SETTLED).nonzero().flatten()
    for start in range(n_boot, n_test if near.numel() else n_boot, _BLOCK):
        rows = (d[near], known[near], diff[near], tiny[near])
        _, more = _resampled(*rows, min(_BLOCK, n_test - start), g)
        beyond[near] += (more.abs() >= t[near].abs()).sum(0)
        valid[near] += (~torch.isnan(more)).sum(0)
    tail = (1 - level) / 2
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64, device=t_boot.device)
    t_low, t_high = torch.nanquantile(t_boot, q, dim=0)  # (2, R) -> (R,) each
    low, high = diff - t_high * se, diff - t_low * se
    # too few distinct values to studentise (a 0/1 metric on 3 images): the percentile interval
    p_low, p_high = torch.nanquantile(means, q, dim=0)
    low, high = (
        torch.where(torch.isnan(low), p_low, low),
        torch.where(torch.isnan(high), p_high, high),
    )
    low, high = torch.minimum(low, diff), torch.maximum(high, diff)
    # the exact sign test's p when all n images agree in sign, 2 / 2^n: no test of n paired
    # images can be surer (a sign-flip test's floor); the bootstrap-t can claim far more at
    # small n (3e-6 for rows of noise on 3 images, whose 10 distinct resamples rarely reach
    # the observed |t|)
    sign_p = (2 * 0.5 ** n_known.double()).clamp_max(1.0)
    p = torch.maximum(((beyond + 1) / (valid + 1)).double(), sign_p)
    # every image differs by the same amount: nothing to resample; the sign test's p alone
    p = torch.where(se > tiny, p, torch.where(diff.abs() > 0, sign_p, 1.0))
    p = torch.where(n_known > 1, p, 1.0)
    return Paired(diff, low, high, p, holm(p), n_known)


_BLOCK = 4000  # resamples per block beyond the interval's: bounds the (B, N), (B, R) tables
_SETTLED = 50  # exceedances of the observed |t| after which a p-value needs no more resamples


def _resampled(
    d: Tensor, known: Tensor, diff: Tensor, tiny: Tensor, b: int, g: torch.Generator
) -> tuple[Tensor, Tensor]:
    """`b` joint resamples of the images -> (b, R) resampled means and their studentised
    t (NaN where a resample has too few distinct values to studentise)."""
    n = d.shape[1]
    draws = torch.randint(n, (b, n), generator=g, device=g.device).cpu()
    weight = torch.zeros(b, n, dtype=torch.float64, device=d.device).scatter_add_(
        1, draws.to(d.device), torch.ones(b, n, dtype=torch.float64, device=d.device)
    )  # (B, N): how often each image is drawn
    count = weight @ known.double().T  # (B, N) x (N, R) -> (B, R)
    means = (weight @ d.T) / count.clamp_min(1)  # (B, R) resampled mean differences
    squares = (weight @ (d * d).T) / count.clamp_min(1)
    # the standard error of each resampled mean: studentising makes the test accurate at the
    # small n and far tails Holm asks for (the percentile bootstrap is too narrow there)
    se_boot = (
        (squares - means**2).clamp_min(0) * count / (count - 1).clamp_min(1) / count.clamp_min(1)
    ).sqrt()
    t_boot = (means - diff) / se_boot.clamp_min(1e-300)  # (B, R): what t looks like under H0
    return means, torch.where((count > 1) & (se_boot > tiny), t_boot, torch.nan)


def holm(p: Tensor) -> Tensor:
    """(..., m) p-values -> (..., m) Holm-adjusted: max over j <= i of (m - j) p_(j), sorted."""
    m = p.shape[-1]
    order = p.argsort(-1)
    ranked = p.gather(-1, order) * torch.arange(m, 0, -1, dtype=p.dtype, device=p.device)
    adjusted = ranked.cummax(-1).values.clamp_max(1.0)
    return torch.empty_like(adjusted).scatter_(-1, order, adjusted)


# Below this many images a paired difference gets no interval and no verdict, TOO_FEW: on 3
# images the bootstrap-t studentises many resamples by a standard error near 0, so a bound
# swung from 11,825 to 0.012 when one score moved by 3e-7 (fp32 rounding of another thread
# count), and the sign-test floor 2 / 2^n keeps a decision out of reach anyway. At 10 that
# floor is 0.002 and the resamples have 92,378 distinct draws, not 10.
PAIRED_MIN_IMAGES = 10
TOO_FEW = "too few images"


def paired_decision(diff: float, p_holm: float, higher_is_better: bool, alpha: float) -> str:
    """ "better" / "worse" when the adjusted p is below alpha, by the metric's direction;
    "indistinguishable" otherwise."""
    if not p_holm < alpha or diff != diff or diff == 0:
        return "indistinguishable"
    return "better" if (diff > 0) == higher_is_better else "worse"
