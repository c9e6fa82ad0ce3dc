"""Sanity checks: cascading model parameter randomisation (Adebayo et al. 2018, sec. 3), Random
Logit (Sixt et al. 2020) and eMPRT's rise in map entropy (Hedstrom et al. 2023), in one pass.

On a deep copy of the model (the caller's model is never touched), blocks are re-initialised
from the output back towards the input, one at a time and cumulatively; after each step the
maps are computed again and compared with the original ones, per image, by Spearman rank
correlation (average ranks for ties) and SSIM (Wang et al. 2004: 11x11 Gaussian window,
sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, valid region). As Adebayo et al. do, the maps are
compared as |map| min-max scaled to [0, 1] (camlens maps already are). A map that depends on
the model must decorrelate as the layers producing it are randomised; one that stays
correlated (an edge detector of the input) explains the image, not the model.

Three more measurements make the cascade hard to fool (`sanity_verdict` in verdicts.py judges):
- self-agreement: the method run twice on the unrandomised model (`make_twin`, other seeds where
  it is stochastic) gives the noise floor every similarity is read against;
- Random Logit: the map of the explained class against the map of a random other class on the
  same image and model, so a method that never reads the class is caught;
- entropy: the discrete entropy of each map's values (100 bins in [0, 1], as Quantus's eMPRT),
  on the trained model and after every step; a map of the model should get noisier.
A flat map carries no information: a pair of flat maps counts as unchanged (similarity 1),
never as decorrelated (a raw Spearman of a constant is 0).

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

from camlens.cam import eval_mode, find_layer
from camlens.cam.precision import full_fp32
from camlens.metrics.core import EngineLike, make_generator, pearson

__all__ = [
    "SanityResult",
    "cascade_order",
    "is_flat",
    "map_entropy",
    "reinitialise",
    "sanity_check",
    "similarity",
    "spearman",
    "ssim",
]


@dataclass(frozen=True)
class SanityResult:
    """Per cascade step, how similar each image's map still is to its original map."""

    steps: tuple[str, ...]  # the block randomised at each step (all earlier ones stay random)
    spearman: Tensor  # (S, N) rank correlation with the original maps; 1 where both are flat
    ssim: Tensor  # (S, N) SSIM of the same pairs
    maps: Tensor  # (S + 1, n_keep, H, W) the compared maps, original first: for a figure
    self_agreement: Tensor  # (N,) similarity of two runs on the trained model: the noise floor
    random_logit: Tensor  # (N,) similarity of the explained class's map and another class's
    entropy: Tensor  # (S + 1, N) discrete entropy of each map (nats), original first
    flat: Tensor  # (S + 1, N) bool: the map is flat (no place stands out), original first

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
    """Default init for every parameter of `module`, reproducible from `generator`.

    The fresh values are drawn on a CPU copy and copied back: the same randomised model, hence
    the same sanity figures, whatever device the module is on (a GPU's stream differs)."""
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    fresh = copy.deepcopy(module).cpu()
    # the CPU's stream alone, restored after: the caller's CPU and CUDA streams stay untouched
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.default_generator.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            else:
                for p in m.parameters(recurse=False):
                    std = float(p.std()) if p.numel() > 1 else 1.0
                    p.normal_(0.0, std if std > 0 else 1.0, generator=torch.default_generator)
        for mine, new in zip(
            [*module.parameters(), *module.buffers()],
            [*fresh.parameters(), *fresh.buffers()],
            strict=True,
        ):
            mine.copy_(new)


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


def is_flat(maps: Tensor) -> Tensor:
    """(N, H, W) -> (N,) bool: the map's range is rounding noise (camlens makes those zeros)."""
    a = maps.abs().flatten(1).double()
    lo, hi = a.amin(1), a.amax(1)
    return hi - lo <= 1e-6 * hi.clamp_min(1.0)


def similarity(a: Tensor, b: Tensor) -> Tensor:
    """(N, H, W) x 2 -> (N,) Spearman of |a| and |b|, but 1 where both maps are flat.

    Two flat maps are the same (no information, unchanged); Spearman's convention of 0 for a
    constant would count a method that returns a constant for every model as decorrelated.
    """
    return torch.where(is_flat(a) & is_flat(b), 1.0, spearman(a, b))


def map_entropy(maps: Tensor, bins: int = 100) -> Tensor:
    """(N, H, W) -> (N,) entropy (nats) of the histogram of |map| min-max scaled into [0, 1].

    eMPRT's complexity (Quantus `discrete_entropy`): a peaked map has most places in few bins,
    a noisy one spreads over many. A flat map has entropy 0.
    """
    scaled = _scaled(maps).flatten(1)  # (N, H*W) in [0, 1]
    index = (scaled * bins).long().clamp_max(bins - 1)
    counts = torch.zeros(scaled.shape[0], bins, dtype=torch.float64, device=maps.device)
    counts.scatter_add_(1, index, torch.ones_like(scaled))
    p = counts / counts.sum(1, keepdim=True)  # (N, bins)
    return -(p * p.clamp_min(1e-300).log()).sum(1).float()


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


def _maps(make_engine: Callable[[nn.Module], EngineLike], model: nn.Module, images, targets):
    engine = make_engine(model)
    try:
        return engine(images, targets).detach()
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()


@full_fp32()  # TF32 off, restored after (camlens.cam.precision)
def sanity_check(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    make_engine: Callable[[nn.Module], EngineLike],
    layers: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    keep: int = 8,
    make_twin: Callable[[nn.Module], EngineLike] | None = None,
) -> SanityResult:
    """Randomise `layers` (default `cascade_order(model)`) of a copy, one more per step.

    `make_engine(model)` returns the method under test for a model, e.g.
    `lambda m: camlens.cam.GradCAM(m, "layer4")` (a job passes `explain.engine_for`); maps
    explain `targets` throughout.
    `make_twin(model)`: the same method with other seeds, for the self-agreement floor of a
    stochastic method; None runs `make_engine` again. The first `keep` images' maps are kept.
    """
    names = list(cascade_order(model) if layers is None else layers)
    if not names:
        raise ValueError("no layers to randomise: the model has no parameters, or layers=[]")
    victim = copy.deepcopy(model)
    blocks = [find_layer(victim, name) for name in names]  # unknown names fail before any work
    g = make_generator(generator, 0)
    targets = torch.as_tensor(targets, device=images.device).long().expand(images.shape[0])
    original = _maps(make_engine, model, images, targets)  # (N, H, W)
    twin = _maps(make_twin or make_engine, model, images, targets)
    with torch.no_grad(), eval_mode(model):
        classes = model(images).shape[1]
    # Random Logit: any class but the explained one, drawn per image
    shift = torch.randint(1, max(classes, 2), targets.shape, generator=g, device=g.device)
    others = (targets + shift.to(targets.device)) % max(classes, 2)
    other = _maps(make_engine, model, images, others)
    kept, rho, sim = [_scaled(original[:keep]).float()], [], []
    entropy, flat = [map_entropy(original)], [is_flat(original)]
    for block in blocks:
        reinitialise(block, g)
        maps = _maps(make_engine, victim, images, targets)
        rho.append(similarity(original, maps))
        sim.append(ssim(original, maps))
        entropy.append(map_entropy(maps))
        flat.append(is_flat(maps))
        kept.append(_scaled(maps[:keep]).float())
    return SanityResult(
        steps=tuple(names),
        spearman=torch.stack(rho),
        ssim=torch.stack(sim),
        maps=torch.stack(kept),
        self_agreement=similarity(original, twin),
        random_logit=similarity(original, other),
        entropy=torch.stack(entropy),
        flat=torch.stack(flat),
    )
