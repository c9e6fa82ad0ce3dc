"""ARCC (Domeniconi et al. 2026, "How to Evaluate and Refine your CAM", arXiv:2605.14641).

ARCC is ADCC (Poppi et al. 2021: the harmonic mean of 1 - Average Drop, Coherency and
1 - Complexity) with the Average Drop term replaced by ROAD, the composite that tracked the
ground-truth attributions best on the paper's synthetic benchmark:

    ARCC = 3 / (1 / Coherency + 1 / (1 - Complexity) + 1 / ((1 + ROAD) / 2))

- Coherency = (Pearson(map, map') + 1) / 2, where map' is the same method's map of the same
  class on image * map: a faithful map survives keeping only what it points at.
- Complexity = ||map||_1 / (H * W), the mean of a [0, 1] map: a compact map is preferred.
- ROAD = pytorch-grad-cam's ROADCombined at removal fractions 20, 40, 60, 80 %: the mean of
  (LeRF - MoRF) / 2 of the softmax probability, mapped to (0, 1) by (1 + ROAD) / 2.
Higher is better; it is undefined (NaN) unless Coherency > 0, Complexity < 1 and ROAD < 1.
A map that ignores its input (the centre baseline) has Coherency 1 by construction, so
ARCC can rank it above a real method: read it beside its baselines.

The formula and component definitions follow the authors' code: `metrics/coherency.py`,
`metrics/complexity.py` and `metrics/road.py` of github.com/liuktc/RefineCAM, and the
`compute_ARCC` of the first author's analysis notebook (github.com/liuktc/ML4CV_XAI,
`plots/plots10.ipynb`), which divides the L1 norm by the pixel count and rescales ROAD.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.metrics.core import EngineLike, pearson

__all__ = ["arcc", "coherency", "complexity"]


def complexity(maps: Tensor) -> Tensor:
    """(N, H, W) maps in [0, 1] -> (N,) L1 norm over the pixel count; lower is simpler."""
    return maps.flatten(1).abs().mean(1)


def coherency(engine: EngineLike, images: Tensor, maps: Tensor, targets: Tensor) -> Tensor:
    """(N,) (Pearson(maps, engine(images * maps, targets)) + 1) / 2; 0.5 for constant maps."""
    again = engine(images * maps[:, None], targets)  # (N, H, W)
    return (pearson(maps, again) + 1) / 2


def arcc(coherency: Tensor, complexity: Tensor, road: Tensor) -> Tensor:
    """(N,) x 3 -> (N,) harmonic mean of the three terms; NaN where a term leaves its range."""
    ok = (coherency > 0) & (complexity < 1) & (road < 1)
    terms = torch.stack([coherency, 1 - complexity, (1 + road) / 2])  # (3, N)
    value = 3 / (1 / terms.clamp_min(1e-12)).sum(0)
    return torch.where(ok, value, torch.nan)
