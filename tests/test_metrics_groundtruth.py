"""camlens.metrics against attributions known by construction.

1. A model whose logit reads only one image region: the map of that region must beat the
   random map on deletion, insertion and ROAD, and its inverse must come last.
2. ARCC's central check in miniature (Domeniconi et al. 2026): a linear model on synthetic
   images, so the true attribution of pixel p is w_p * x_p; families of maps that move away
   from it (mixed with noise, shifted, blurred) have a known order of quality (Pearson with
   the truth). A metric agrees with the truth when it ranks each image's maps in that order.
   Run with -s to see the table for every metric.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camlens.metrics import HIGHER_IS_BETTER, baseline_maps, score_maps
from camlens.metrics.core import pearson
from camlens.metrics.sanity import average_ranks

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 16


class ReadsOneRegion(nn.Module):
    """logit 0 = 12 * (mean brightness of the region - 0.5), logit 1 = 0."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = (images.mean(1) * self.region).sum((1, 2)) / self.region.sum()
        z = 12 * (m - 0.5)
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_the_oracle_map_beats_random_and_its_inverse_is_worst():
    region = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    region[4:12, 4:12] = True
    g = torch.Generator().manual_seed(0)
    images = 0.2 * torch.rand(6, 3, SIDE, SIDE, generator=g)
    images[:, :, region] = 0.8 + 0.2 * torch.rand(6, 3, int(region.sum()), generator=g)
    oracle = region.float().expand(6, SIDE, SIDE)
    maps = {
        "oracle": oracle,
        "random": baseline_maps(images.shape, "random", g),
        "inverse": 1 - oracle,
    }
    model = ReadsOneRegion(region)
    scores = {
        name: score_maps(model, images, m, 0, ["deletion", "insertion", "road"]).values
        for name, m in maps.items()
    }
    for metric in ("deletion", "insertion", "road"):
        sign = 1 if HIGHER_IS_BETTER[metric] else -1
        best, middle, worst = (sign * scores[n][metric] for n in ("oracle", "random", "inverse"))
        assert bool((best > middle).all() and (middle > worst).all()), metric


def normalised(maps: torch.Tensor) -> torch.Tensor:
    lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


def blurred(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return maps
    k = torch.exp(-((torch.arange(9.0) - 4) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(maps[:, None], (4, 4, 4, 4), mode="replicate")
    return F.conv2d(F.conv2d(x, k.view(1, 1, 1, 9)), k.view(1, 1, 9, 1))[:, 0]


class Linear(nn.Module):
    """logit 0 = sum(w * grey(x)) - bias, logit 1 = 0: pixel p contributes w_p * grey(x_p)."""

    def __init__(self, w: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.bias = bias

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = (images.mean(1) * self.w).sum((1, 2)) - self.bias
        return torch.stack([z, torch.zeros_like(z)], 1)


def agreement_table() -> dict[str, dict[str, float]]:
    """family -> metric -> mean over images of Spearman(metric's ranking, truth's ranking)."""
    n = 12
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    blob = (yy - 6) ** 2 + (xx - 9) ** 2 < 16
    w = torch.zeros(SIDE, SIDE)
    w[blob] = 0.2 + 0.8 * torch.rand(int(blob.sum()), generator=g)
    images = 0.2 * torch.rand(n, 3, SIDE, SIDE, generator=g)
    images[:, :, blob] += 0.6 + 0.2 * torch.rand(n, 3, int(blob.sum()), generator=g)
    model = Linear(w, float((w * images.mean(1)).sum((1, 2)).mean()) - 2)
    noise = torch.rand(n, SIDE, SIDE, generator=g)

    def truth(im: torch.Tensor) -> torch.Tensor:
        return normalised(w * im.mean(1))

    # each method maps any images, so that ARCC's coherency can run it on image * map
    families = {
        "noise": [
            lambda im, t=t: normalised((1 - t) * truth(im) + t * noise) for t in (0, 0.3, 0.6, 0.9)
        ],
        "shift": [lambda im, d=d: truth(im).roll((d, d), (1, 2)) for d in (0, 1, 2, 4)],
        "blur": [lambda im, s=s: normalised(blurred(truth(im), s)) for s in (0, 1, 2, 4)],
    }
    table = {}
    for family, methods in families.items():
        quality, values = [], {}
        for method in methods:
            maps = method(images)
            quality.append(pearson(maps, truth(images)))

            def engine(im, targets, method=method):
                return method(im)

            s = score_maps(model, images, maps, 0, engine=engine, steps=8)
            for name, v in s.values.items():
                values.setdefault(name, []).append(v if HIGHER_IS_BETTER[name] else -v)
        truth_ranks = average_ranks(torch.stack(quality, 1))  # (N, maps)
        table[family] = {
            name: float(pearson(average_ranks(torch.stack(v, 1)), truth_ranks).nanmean())
            for name, v in values.items()
        }
    return table


def test_arcc_ranks_maps_as_the_ground_truth_does_where_average_drop_does_not():
    table = agreement_table()
    names = list(table["noise"])
    print("\nagreement with the true attribution (Spearman over each image's maps, mean)")
    print(f"{'metric':16s}" + "".join(f"{f:>8s}" for f in table))
    for name in names:
        print(f"{name:16s}" + "".join(f"{table[f][name]:8.2f}" for f in table))
    for family, row in table.items():
        assert row["arcc"] > 0.9, family
        assert row["deletion"] > 0.6 and row["road"] > 0.6, family
    # Average Drop prefers the blurred, larger maps: the disagreement the paper reports
    assert table["blur"]["drop"] < 0
