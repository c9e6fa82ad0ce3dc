"""The one-forward CAM methods: each is one `_map` override on `BaseCAM`.

    GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM,  (acts, grads) -> map
    GradCAMElementWise, EigenGradCAM
    EigenCAM                                                 acts -> map, class-agnostic
    CAM                                                      acts, final linear weights -> map

Every `_map` takes float32 `acts`, `grads` (N, C, h, w) and returns the (N, h, w) map before the
ReLU, which the base applies (except to signed contrast maps, Eigen-CAM and Eigen-Grad-CAM).

Negative activations. The papers assume a layer after a ReLU (A >= 0); a conv or BatchNorm output
is signed. camlens keeps each formula's map, sum_k w_k A_k, with A signed: a negative activation
where the gradient is positive counts against its place, as its first-order share g * A < 0
says. Where a formula uses a channel's activations as an amount (Grad-CAM++'s sum_ab A_kab in
alpha, XGrad-CAM's share A_kij / sum_ab A_kab), it uses |A|: the paper's formula when A >= 0,
and bounded when A is signed, where A's sum can be zero or negative and the paper's ratio would
blow up or flip sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from camlens.cam.base import BaseCAM, CamConfig, Resolved, find_layer

__all__ = [
    "CAM",
    "EigenCAM",
    "EigenGradCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "XGradCAM",
    "first_component_map",
    "gradcam_plusplus_map",
]


class GradCAM(BaseCAM):
    """Grad-CAM, Selvaraju et al. 2017 (arXiv:1610.02391).

    L = ReLU(sum_k w_k A_k), w_k = mean_ij dy/dA_kij.
    """

    name = "gradcam"
    linear = True

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        weights = grads.mean((2, 3))  # eq. 1: (N, C, h, w) -> (N, C)
        return torch.einsum("nc,nchw->nhw", weights, acts)  # eq. 2 before the ReLU


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++, Chattopadhay et al. 2018 (arXiv:1710.11063).

    L = ReLU(sum_k w_k A_k), w_k = sum_ij a_kij ReLU(g_kij),
    a_kij = g^2 / (2 g^2 + sum_ab |A_kab| g^3) with g = dS/dA for the score Y = exp(S).

    The paper's sum_ab A_kab assumes A >= 0; camlens takes |A| (the same there), which keeps
    alpha in (0, 1/2] where g > 0 on a signed layer. With A's own sum, which can be zero or
    negative there, the denominator can vanish or change sign and alpha blow up.
    """

    name = "gradcam++"

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        # eq. 19: with Y = exp(S) and S piecewise linear in A, the 2nd and 3rd derivatives of Y
        # are exp(S) g^2 and exp(S) g^3; exp(S) cancels in alpha and only scales the map.
        g2 = grads.pow(2)
        return gradcam_plusplus_map(acts, grads, g2, g2 * grads)


def gradcam_plusplus_map(acts: Tensor, g1: Tensor, g2: Tensor, g3: Tensor) -> Tensor:
    """Grad-CAM++'s map (eq. 19) from the gradient's 1st, 2nd, 3rd powers, all (N, C, h, w).

    Shared with SmoothGradCAM++, which passes powers averaged over noisy copies. Alpha is 0
    where the denominator is not positive: the paper sets 0 where it vanishes (g = 0); for one
    g it is negative only where g < 0, which ReLU(g) drops anyway, but averaged powers of
    gradients of both signs can make it negative where the mean g > 0, and alpha flip sign.
    """
    mass = acts.abs().sum((2, 3), keepdim=True)  # (N, C, h, w) -> (N, C, 1, 1)
    denom = 2 * g2 + mass * g3
    alpha = torch.where(denom > 0, g2 / torch.where(denom > 0, denom, 1.0), 0.0)
    weights = (alpha * g1.clamp_min(0)).sum((2, 3))  # (N, C, h, w) -> (N, C)
    return torch.einsum("nc,nchw->nhw", weights, acts)


class XGradCAM(BaseCAM):
    """XGrad-CAM, Fu et al. 2020 (arXiv:2008.02312).

    L = ReLU(sum_k w_k A_k), w_k = sum_ij (|A_kij| / sum_ab |A_kab|) dy/dA_kij.

    The paper's share A_kij / sum_ab A_kab assumes A >= 0; camlens takes |A|, which is the same
    for every channel of one sign (after a ReLU, or all negative) and on a channel of both signs
    still a share (>= 0, summing to 1) where A's own sum can be near zero and the weight explode.
    """

    name = "xgradcam"
    linear = True

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        mass = acts.abs()
        total = mass.sum((2, 3), keepdim=True)  # (N, C, h, w) -> (N, C, 1, 1)
        # a channel that is zero everywhere has no share to give; 0/0 would be NaN
        share = torch.where(total != 0, mass / torch.where(total != 0, total, 1.0), 0.0)
        weights = (share * grads).sum((2, 3))  # (N, C, h, w) -> (N, C)
        return torch.einsum("nc,nchw->nhw", weights, acts)


class HiResCAM(BaseCAM):
    """HiResCAM, Draelos & Carin 2020 (arXiv:2011.08891).

    L = ReLU(sum_k dy/dA_k * A_k), elementwise: the gradient is not averaged over space.
    """

    name = "hirescam"
    linear = True

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        return (grads * acts).sum(1)  # (N, C, h, w) -> (N, h, w)


class LayerCAM(BaseCAM):
    """LayerCAM, Jiang et al. 2021 (IEEE TIP 30, doi:10.1109/TIP.2021.3089943).

    L = ReLU(sum_k ReLU(dy/dA_k) * A_k), elementwise.

    On a signed layer A keeps its sign: where the gradient is positive and the activation
    negative, the place counts against the class (g * A < 0), as in HiResCAM; rectifying A
    instead would hide what negative activations do to the score.
    """

    name = "layercam"

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        return (grads.clamp_min(0) * acts).sum(1)  # (N, C, h, w) -> (N, h, w)


class GradCAMElementWise(BaseCAM):
    """Grad-CAM element-wise, pytorch-grad-cam's GradCAMElementWise (no paper).

    L = sum_k ReLU(dy/dA_k * A_k): HiResCAM's products, each rectified before the channel sum,
    so a channel that counts against the class at a place cannot cancel one that counts for it.
    """

    name = "gradcam-elementwise"

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        return (grads * acts).clamp_min(0).sum(1)  # (N, C, h, w) -> (N, h, w)


class EigenCAM(BaseCAM):
    """Eigen-CAM, Muhammad & Yeasin 2020 (arXiv:2008.00299); class-agnostic, no gradients.

    L = A v1, v1 the first right singular vector of the (hw, C) activation matrix A = U S V^T.
    """

    name = "eigencam"
    needs_grads = False
    rectify = False  # the projection is the map; first_component_map fixes its sign

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        return first_component_map(acts)


class EigenGradCAM(BaseCAM):
    """Eigen-Grad-CAM, pytorch-grad-cam's class-specific variant of Eigen-CAM (no paper).

    L = (G o A) v1, v1 the first right singular vector of the (hw, C) matrix M = G o A.

    No centring and no ReLU. The sign follows the component's share of the score: with
    M = sum_i s_i u_i v_i^T, the first-order score sum(M) gets s1 (1'u1)(1'v1) from the first
    component, and place p gets s1 u1_p (1'v1) = L_p (1'v1). So L is oriented by the sign of
    1'v1 and its bright places are where the component raises the score. Making the map's sum
    >= 0 instead (Eigen-CAM's rule) shows where it *lowers* the score whenever 1'v1 < 0, common
    for a class with a negative logit. pytorch-grad-cam centres each channel over places first,
    which makes every map sum to 0, and leaves the sign to the SVD before its ReLU.
    """

    name = "eigengradcam"
    rectify = False  # the projection is the map; first_component_map fixes its sign

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        return score_share_component_map(grads * acts)


def score_share_component_map(x: Tensor) -> Tensor:
    """(N, C, h, w) grads x acts -> (N, h, w): the first component, oriented by its score share.

    Each place's share of the component's first-order score is map_p (1'v1): the map times
    sign(1'v1) is positive where the component raises the score, whatever sign the SVD picked.
    Where 1'v1 is 0 the component adds nothing to the score and the map's sum decides.
    """
    n, c, h, w = x.shape
    flat = x.flatten(2).transpose(1, 2)  # (N, C, h, w) -> (N, hw, C)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)  # vh: (N, min(hw, C), C)
    proj = torch.einsum("npc,nc->np", flat, vh[:, 0])  # (N, hw, C) -> (N, hw)
    share = vh[:, 0].sum(1, keepdim=True)  # (N, 1): 1'v1
    tie = torch.where(proj.sum(1, keepdim=True) < 0, -1.0, 1.0)
    sign = torch.where(share < 0, -1.0, torch.where(share > 0, 1.0, tie))
    return (proj * sign).view(n, h, w)  # (N, hw) -> (N, h, w)


def first_component_map(x: Tensor) -> Tensor:
    """(N, C, h, w) -> (N, h, w): x's projection on its first right singular vector, per image."""
    n, c, h, w = x.shape
    flat = x.flatten(2).transpose(1, 2)  # (N, C, h, w) -> (N, hw, C)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)  # vh: (N, min(hw, C), C)
    proj = torch.einsum("npc,nc->np", flat, vh[:, 0])  # (N, hw, C) -> (N, hw)
    # singular vectors have no sign: choose the one under which the map is mostly positive
    sign = torch.where(proj.sum(1, keepdim=True) < 0, -1.0, 1.0)
    return (proj * sign).view(n, h, w)  # (N, hw) -> (N, h, w)


class CAM(BaseCAM):
    """CAM, Zhou et al. 2016 (arXiv:1512.04150), for a GAP + linear head; no gradients.

    L = ReLU(sum_k w_ck A_k), w_c the final linear layer's row of class c (ReLU'd like Grad-CAM,
    which it equals on such a head). `fc` names that layer; None: the model's last nn.Linear.
    """

    name = "cam"
    needs_indices = True
    needs_grads = False
    linear = True

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | Sequence[str | nn.Module],
        config: CamConfig | None = None,
        fc: str | nn.Module | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(model, layer, config, **overrides)
        if fc is None:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("CAM needs a final nn.Linear; pass fc= to name it")
            fc = linears[-1]
        self.fc = find_layer(model, fc) if isinstance(fc, str) else fc
        if not isinstance(getattr(self.fc, "weight", None), Tensor) or self.fc.weight.ndim != 2:
            raise TypeError(f"fc must be a linear layer with a (K, C) weight, got {self.fc}")

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        if target.indices is None:
            raise ValueError("CAM needs class indices as targets, not scores")
        weight = self.fc.weight.detach().float()  # (K, C)
        if weight.shape[1] != acts.shape[1]:
            raise ValueError(
                f"CAM needs the layer that feeds GAP -> fc: fc takes {weight.shape[1]} channels, "
                f"the hooked layer gives {acts.shape[1]}"
            )
        weights = target.rows(weight)  # (K, C) -> (N, C), minus the versus rows of a contrast
        return torch.einsum("nc,nchw->nhw", weights, acts)
