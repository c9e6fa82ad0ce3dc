"""What a call returns, and how a call's raw per-chunk maps become those results.

`RawMaps` is what a method hands back per chunk; `assemble_results` concatenates the chunks,
rectifies, upsamples to the input size (bilinear), normalises and builds one `CamResult` per
target set. `PairResult` groups the predicted-class, label-class and contrast results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from camlens.cam.layers import upsample
from camlens.cam.normalize import normalize_maps
from camlens.cam.renamed import Renamed
from camlens.cam.targets import Resolved

__all__ = ["CamResult", "PairResult", "RawMaps", "assemble_results"]


@dataclass(frozen=True)
class CamResult:
    """The maps of one target set, with what produced them. All tensors are detached."""

    maps: Tensor  # (N, H, W) float32 in [0, 1] ([-1, 1] if signed); mean over the hooked layers
    layer_maps: Tensor  # (L, N, H, W) the same, one per hooked layer
    low_res: tuple[Tensor, ...]  # per layer (N, h, w): raw maps at native resolution
    raw_max: Tensor  # (L, N) each raw map's maximum (max |value| if signed) before normalising
    logits: Tensor  # (N, K) the model's output on the images
    targets: Tensor | None  # (N,) classes explained; None when a callable gave scores
    versus: Tensor | None  # (N,) or (N, k) the subtracted classes of a contrast, else None
    layers: tuple[str, ...]  # dotted names of the hooked layers
    resolutions: tuple[tuple[int, int], ...]  # each layer's native (h, w)
    method: str  # METHODS key of the engine that made it
    normalize: str  # the normalisation applied to `maps` and `layer_maps`
    signed: bool = field(default=False)  # True for contrast maps: show with a diverging colormap
    cams, layer_cams = Renamed(), Renamed()  # camlens 0.1's names of maps and layer_maps

    @property
    def preds(self) -> Tensor:
        """(N,) the predicted classes."""
        return self.logits.argmax(1)

    def layer(self, name: str) -> Tensor:
        """(N, H, W) the normalised map of one hooked layer."""
        if name not in self.layers:
            raise KeyError(f"no layer {name!r} in this result; it has {', '.join(self.layers)}")
        return self.layer_maps[self.layers.index(name)]


@dataclass(frozen=True)
class PairResult:
    """Predicted-class, label-class and contrast maps of the same images from one forward pass."""

    pred: CamResult  # maps of the predicted class (preds)
    label: CamResult  # maps of the true class (labels)
    contrast: CamResult | None  # signed map of logit[pred] - logit[label]; None if not linear


@dataclass
class RawMaps:
    """What `_raw_chunk` returns: logits, and per target set its Resolved and per-layer maps."""

    logits: Tensor
    targets: list[Resolved]
    maps: list[list[Tensor]]  # [set][layer] (N, h, w) float32, before rectification


def assemble_results(
    chunks: list[RawMaps],
    names: tuple[str, ...],
    size: tuple[int, int],
    mode: str,
    *,
    rectify: bool,
    method: str,
) -> list[CamResult]:
    """One CamResult per target set from the chunks' raw maps of the layers `names`."""
    n_sets = len(chunks[0].targets)
    logits = torch.cat([c.logits for c in chunks]).detach()
    signed = [chunks[0].targets[s].signed for s in range(n_sets)]
    low_res: list[list[Tensor]] = []  # [set][layer] (N, h, w)
    for s in range(n_sets):
        per_layer = []
        for li in range(len(names)):
            raw = torch.cat([c.maps[s][li] for c in chunks])
            per_layer.append(raw if signed[s] or not rectify else raw.clamp_min(0))
        low_res.append(per_layer)
    resolutions = tuple(tuple(m.shape[-2:]) for m in low_res[0])
    # per layer, normalise each group of same-signedness sets together (for "pair")
    layer_maps: list[list[Tensor]] = [[] for _ in range(n_sets)]
    for li in range(len(names)):
        for group in (False, True):
            members = [s for s in range(n_sets) if signed[s] == group]
            if not members:
                continue
            ups = [upsample(low_res[s][li], size) for s in members]
            for s, m in zip(members, normalize_maps(ups, mode, group), strict=True):
                layer_maps[s].append(m)
    combined: list[Tensor] = [lc[0] for lc in layer_maps]
    if len(names) > 1:
        means = [torch.stack(lc).mean(0) for lc in layer_maps]  # L x (N, H, W) -> (N, H, W)
        for group in (False, True):
            members = [s for s in range(n_sets) if signed[s] == group]
            if members:
                normed = normalize_maps([means[s] for s in members], mode, group)
                for s, m in zip(members, normed, strict=True):
                    combined[s] = m
    results = []
    for s in range(n_sets):
        targets = [c.targets[s] for c in chunks]
        idx = None if targets[0].indices is None else torch.cat([t.indices for t in targets])
        vs = None if targets[0].versus is None else torch.cat([t.versus for t in targets])
        raw_max = torch.stack(
            [(m.abs() if signed[s] else m).amax((1, 2)) for m in low_res[s]]
        )  # L x (N, h, w) -> (L, N)
        results.append(
            CamResult(
                maps=combined[s].detach(),
                layer_maps=torch.stack(layer_maps[s]).detach(),
                low_res=tuple(m.detach() for m in low_res[s]),
                raw_max=raw_max.detach(),
                logits=logits,
                targets=None if idx is None else idx.detach(),
                versus=None if vs is None else vs.detach(),
                layers=names,
                resolutions=resolutions,
                method=method,
                normalize=mode,
                signed=signed[s],
            )
        )
    return results
