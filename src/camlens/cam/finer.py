"""Finer-CAM and RefineCAM: a different score, or several layers, on an existing method.

Neither changes how a map is made. Finer-CAM changes *what* is explained (a `Target` whose
versus is the `Similar` classes), RefineCAM how the maps of several layers are combined (a
`_finish` that multiplies them); both sit on Grad-CAM-family bases as one small subclass.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from camlens.cam.base import CamResult, RawMaps, Resolved, Target, upsample
from camlens.cam.methods import GradCAM, GradCAMPlusPlus
from camlens.cam.results import assemble_results
from camlens.cam.targets import Similar

__all__ = ["FinerCAM", "RefineCAM", "Refined", "refine_maps"]


class FinerCAM(GradCAM):
    """Finer-CAM, Zhang et al. 2025 (arXiv:2501.11309), on Grad-CAM.

    L = ReLU(sum_k w_k A_k), w_k = mean_ij d(y_c - g sum_j p_j y_dj)/dA_kij, over the k =
    `k` classes d_j (FinerKnobs) whose logits are nearest y_c, p_j their softmax probabilities
    renormalised over the k (held constant), g = `gamma` (0.6).

    The score is a `Target(c, versus=Similar(k), weight=g, signed=False)`: the contrast
    machinery of `Target(pred, versus=label)` (which is the case k = 1, g = 1, signed), here
    rectified like a plain map. Every plain target set (None, indices, a callable giving
    indices) becomes one; explicit `Target`s and score callables are explained as given. The
    weights follow the authors' FinerWeightedTarget but are constants: differentiating them
    too (as its code does) adds p_j's softmax gradient, which is not the paper's y_c - g y_d.
    """

    name = "finercam"
    linear = False  # the map is rectified: a signed contrast on top of it would mean nothing

    def _resolve(self, spec: Any, logits: Tensor, want_scores: bool) -> Resolved:
        plain = super()._resolve(spec, logits, want_scores)
        if plain.indices is None or plain.versus is not None or isinstance(spec, Target):
            return plain
        finer = Target(plain.indices, Similar(self.knobs.k), self.knobs.gamma, signed=False)
        return super()._resolve(finer, logits, want_scores)


class Refined:
    """RefineCAM's combination of layers, for any one-forward base: `class R(Refined, LayerCAM)`.

    L_l = N(M_l) * prod_{j after l} R(N(M_j)): each named layer's map is refined by the maps
    of the layers named after it, N a min-max scaling to [0, 1] of the (ReLU'd) map, R a
    bilinear resize to the finest shape among them. With layer=["layer3", "layer4"] the
    layer3 map is the refined one, the layer4 map the base's own (scaled), and `maps` the
    first-named layer's, the product of all (not the mean of the layers, as for other methods).
    """

    linear = False  # products of scaled maps: no signed contrast

    def _finish(self, chunks: list[RawMaps], size: tuple[int, int], mode: str) -> list[CamResult]:
        fused = [RawMaps(c.logits, c.targets, [refine_maps(m) for m in c.maps]) for c in chunks]
        names = tuple(self.layers)
        results = assemble_results(fused, names, size, mode, rectify=False, method=self.name)
        return [replace(r, maps=r.layer_maps[0]) for r in results]


class RefineCAM(Refined, GradCAMPlusPlus):
    """RefineCAM, Domeniconi et al. 2026 (arXiv:2605.14641), on Grad-CAM++ (see `Refined`).

    L = N(M_1) * prod_{j > 1} R(N(M_j)), M_j the Grad-CAM++ map of the j-th named layer.
    """

    name = "refinecam"


def refine_maps(maps: list[Tensor]) -> list[Tensor]:
    """Per layer (N, h_l, w_l) raw maps -> each times the scaled maps of the layers after it."""
    scaled = [_minmax(m.clamp_min(0)) for m in maps]
    out = []
    for i in range(len(maps)):
        group = scaled[i:]
        shape = (max(m.shape[-2] for m in group), max(m.shape[-1] for m in group))
        out.append(torch.stack([upsample(m, shape) for m in group]).prod(0))  # -> (N, h, w)
    return out


def _minmax(maps: Tensor) -> Tensor:
    """(N, h, w) into [0, 1] per map; a flat map (no place stands out) becomes zeros."""
    lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    flat = hi - lo <= torch.finfo(maps.dtype).eps * 8 * hi.abs()
    return torch.where(flat, 0.0, (maps - lo) / (hi - lo).clamp_min(1e-30))
