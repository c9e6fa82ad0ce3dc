"""KPCA-CAM: Eigen-CAM with kernel PCA in place of PCA; one `_map` override, no gradients."""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.cam.base import BaseCAM, Resolved

__all__ = ["KPCACAM", "kernel_pca_map"]


class KPCACAM(BaseCAM):
    """KPCA-CAM, Karmani et al. 2024 (arXiv:2410.00267); class-agnostic, no gradients.

    L = sqrt(l1) v1, (l1, v1) the top eigenpair of the centred kernel matrix
    K_ij = k(x_i, x_j) over the hw places x_i (rows of the (hw, C) activations, centred).

    The kernel and its parameters are KPCAKnobs' `kernel` ("sigmoid": tanh(gamma x.y +
    coef0)), `gamma` (None: 1/C), `coef0` (1.0) and `degree` (3, poly only):
    pytorch-grad-cam's KPCA_CAM defaults, which pass scikit-learn's KernelPCA defaults on.
    As there, the activations are centred over places before the kernel and the kernel is
    centred in feature space (K <- J K J, J = I - 11^T/hw), and the map is KernelPCA's
    `fit_transform` (the places' coordinates on the first component, sqrt(l1) v1) with its
    sign rule: the entry largest in magnitude is positive. The map is centred (it sums to 0),
    so Eigen-CAM's rule (a sum >= 0) cannot fix its sign. Unlike pytorch-grad-cam, no ReLU:
    as camlens's Eigen-CAM, the projection is the map, and a ReLU would flatten the half of
    the places below the mean (often 8 of layer4's 16).
    """

    name = "kpcacam"
    needs_grads = False
    rectify = False  # the projection is the map; kernel_pca_map fixes its sign

    def _map(self, acts: Tensor, grads: Tensor | None, target: Resolved) -> Tensor:
        cfg = self.knobs
        return kernel_pca_map(acts, cfg.kernel, cfg.gamma, cfg.coef0, cfg.degree)


def kernel_pca_map(
    acts: Tensor, kernel: str, gamma: float | None, coef0: float, degree: int
) -> Tensor:
    """(N, C, h, w) -> (N, h, w): each place's coordinate on the first kernel component."""
    n, c, h, w = acts.shape
    # float64: the kernel's top eigenvalues can be close, and the matrix is only (hw, hw)
    x = acts.double().flatten(2).transpose(1, 2)  # (N, C, h, w) -> (N, hw, C)
    x = x - x.mean(1, keepdim=True)
    g = 1.0 / c if gamma is None else gamma
    dots = x @ x.transpose(1, 2)  # (N, hw, C) -> (N, hw, hw)
    if kernel == "linear":
        k = dots
    elif kernel == "poly":
        k = (g * dots + coef0) ** degree
    elif kernel == "rbf":
        sq = x.pow(2).sum(2)  # (N, hw)
        k = torch.exp(-g * (sq[:, :, None] + sq[:, None, :] - 2 * dots).clamp_min(0))
    elif kernel == "sigmoid":
        k = torch.tanh(g * dots + coef0)
    else:
        raise ValueError(f"unknown kpcacam kernel {kernel!r}")
    # centring in feature space: J K J, J = I - 11^T / hw
    k = k - k.mean(1, keepdim=True) - k.mean(2, keepdim=True) + k.mean((1, 2), keepdim=True)
    values, vectors = torch.linalg.eigh(k)  # ascending: the last pair is the top one
    proj = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()  # (N, hw)
    peak = proj.abs().argmax(1, keepdim=True)
    sign = torch.where(proj.gather(1, peak) < 0, -1.0, 1.0)
    return (proj * sign).float().view(n, h, w)  # (N, hw) -> (N, h, w)
