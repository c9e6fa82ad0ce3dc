"""Sanity check by cascading model parameter randomisation (Adebayo et al. 2018, sec. 3).

On a deep copy of the model (the caller's model is never touched), blocks are re-initialised
from the output back towards the input, one at a time and cumulatively; after each step the
maps are computed again and compared with the original ones, per image, by Spearman rank
correlation (average ranks for ties) and SSIM (Wang et al. 2004: 11x11 Gaussian window,
sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, valid region). As Adebayo et al. do, the maps are
compared as |map| min-max scaled to [0, 1] (camlens maps already are). A map that depends on
the model must decorrelate as the layers producing it are randomised; one that stays
correlated (an edge detector of the input) explains the image, not the model.

Re-initialisation calls each submodule's `reset_parameters()` (the layer's default init,
which also resets batch-norm running statistics) under a seed drawn from the generator;
parameters of modules without it are redrawn from N(0, their std).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camlens.cam import find_layer
from camlens.metrics.core import make_generator, pearson

__all__ = [
    "SanityResult",
    "SanityVerdict",
    "cascade_order",
    "reinitialise",
    "sanity_check",
    "sanity_verdict",
    "spearman",
    "ssim",
]

Explainer = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SanityResult:
    """Per cascade step, how similar each image's map still is to its original map."""

    steps: tuple[str, ...]  # the block randomised at each step (all earlier ones stay random)
    spearman: Tensor  # (S, N) rank correlation of each step's maps with the original maps
    ssim: Tensor  # (S, N) SSIM of the same pairs
    maps: Tensor  # (S + 1, n_keep, H, W) the compared maps, original first: for a figure

    def summary(self) -> list[tuple[str, float, float, float, float]]:
        """Per step: (block, Spearman mean, Spearman std, SSIM mean, SSIM std) over images."""
        return [
            (
                name,
                float(r.mean()),
                float(r.std(unbiased=False)),
                float(s.mean()),
                float(s.std(unbiased=False)),
            )
            for name, r, s in zip(self.steps, self.spearman, self.ssim, strict=True)
        ]


@dataclass(frozen=True)
class SanityVerdict:
    """Whether the maps depend on the model: they must decorrelate as it is randomised."""

    passed: bool  # the maps decorrelated once the whole cascade was randomised
    final_spearman: float  # mean Spearman over images after the last step
    decorrelated_at: str | None  # first block after which the mean fell below the threshold


def cascade_order(model: nn.Module) -> list[str]:
    """Blocks with parameters from output to input: children in reverse definition order, the
    elements of a Sequential or ModuleList one at a time (resnet: linear, layer4.1, ..., conv1).

    Definition order is the forward order in most models; pass `layers=` where it is not.
    """
    names: list[str] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            if next(child.parameters(), None) is None:
                continue
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                walk(f"{prefix}{name}.", child)
            else:
                names.append(f"{prefix}{name}")

    walk("", model)
    return names[::-1]


def reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    """Default init for every parameter of `module`, reproducible from `generator`."""
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            else:
                for p in m.parameters(recurse=False):
                    std = float(p.std()) if p.numel() > 1 else 1.0
                    p.normal_(0.0, std if std > 0 else 1.0)


def _scaled(maps: Tensor) -> Tensor:
    """(N, H, W) -> |maps| min-max scaled per map into [0, 1]; constant maps become zeros."""
    a = maps.abs().double()
    lo, hi = a.amin((1, 2), keepdim=True), a.amax((1, 2), keepdim=True)
    return torch.where(hi > lo, (a - lo) / (hi - lo).clamp_min(1e-300), 0.0)


def average_ranks(x: Tensor) -> Tensor:
    """(N, P) -> (N, P) ranks from 0; tied values share the mean of their positions."""
    n, p = x.shape
    values, order = x.sort(dim=1, stable=True)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = (starts.cumsum(1) - 1) + torch.arange(n, device=x.device)[:, None] * p  # (N, P)
    pos = torch.arange(p, dtype=torch.float64, device=x.device).expand(n, p).flatten()
    total = torch.zeros(n * p, dtype=torch.float64, device=x.device)
    total.index_add_(0, group.flatten(), pos)
    count = torch.zeros_like(total).index_add_(0, group.flatten(), torch.ones_like(pos))
    mean = (total / count.clamp_min(1))[group]  # (N, P) in sorted order
    return torch.empty_like(mean).scatter_(1, order, mean)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """(N, H, W) x 2 -> (N,) Spearman rank correlation of |a| and |b|; 0 for a constant map."""
    return pearson(average_ranks(a.abs().flatten(1)), average_ranks(b.abs().flatten(1)))


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """(N, H, W) x 2 -> (N,) mean SSIM of the |.| min-max scaled maps (Wang et al. 2004)."""
    a, b = _scaled(a)[:, None], _scaled(b)[:, None]  # (N, 1, H, W)
    k = min(window, a.shape[-2], a.shape[-1])
    k -= 1 - k % 2  # odd, and no larger than the map
    offsets = torch.arange(k, dtype=torch.float64, device=a.device) - k // 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    g = (g[:, None] * g[None, :] / g.sum() ** 2).view(1, 1, k, k)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, g)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2  # (K L)^2 with data range L = 1
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return s.mean((1, 2, 3)).float()


def _maps(make_engine: Callable[[nn.Module], Explainer], model: nn.Module, images, targets):
    engine = make_engine(model)
    try:
        return engine(images, targets).detach()
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()


def sanity_check(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    make_engine: Callable[[nn.Module], Explainer],
    layers: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    keep: int = 8,
) -> SanityResult:
    """Randomise `layers` (default `cascade_order(model)`) of a copy, one more per step.

    `make_engine(model)` returns the method under test for a model, e.g.
    `lambda m: camlens.cam.create("gradcam", m, "layer4")`; maps explain `targets` throughout.
    The first `keep` images' maps are kept for a figure.
    """
    names = list(cascade_order(model) if layers is None else layers)
    if not names:
        raise ValueError("no layers to randomise: the model has no parameters, or layers=[]")
    victim = copy.deepcopy(model)
    blocks = [find_layer(victim, name) for name in names]  # unknown names fail before any work
    g = make_generator(generator, 0)
    original = _maps(make_engine, model, images, targets)  # (N, H, W)
    kept, rho, sim = [_scaled(original[:keep]).float()], [], []
    for block in blocks:
        reinitialise(block, g)
        maps = _maps(make_engine, victim, images, targets)
        rho.append(spearman(original, maps))
        sim.append(ssim(original, maps))
        kept.append(_scaled(maps[:keep]).float())
    return SanityResult(tuple(names), torch.stack(rho), torch.stack(sim), torch.stack(kept))


def sanity_verdict(result: SanityResult, max_spearman: float = 0.5) -> SanityVerdict:
    """Passed when the mean Spearman over images falls below `max_spearman` by the last step."""
    means = result.spearman.mean(1)  # (S, N) -> (S,)
    below = [name for name, m in zip(result.steps, means, strict=True) if float(m) < max_spearman]
    final = float(means[-1])
    return SanityVerdict(final < max_spearman, final, below[0] if below else None)
