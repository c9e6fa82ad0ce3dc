"""ShapleyCAM: Grad-CAM's weights corrected by a Hessian-vector product, one extra backward.

The one forward pass and the first backward are BaseCAM's, the backward kept differentiable
(`create_graph`); the second backward differentiates the gradient again in the direction of
the activations, H A, for the whole batch at once: images do not interact in eval mode, so
the Hessian of the summed utility is block-diagonal and its product with A is each image's own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from camlens.cam.base import BaseCAM, RawMaps, Resolved

__all__ = ["ShapleyCAM"]


class ShapleyCAM(BaseCAM):
    """ShapleyCAM, Cai et al. 2025 (arXiv:2501.06261).

    L = ReLU(sum_k w_k A_k), w_k = mean_ij (g - (H A) / 2)_kij, g = du/dA, H = d2u/dA2,
    u = y_c + log softmax(y)_c, the paper's ReST utility.

    A (g - H A / 2) is each activation's Shapley value in the game whose utility is u's
    second-order Taylor expansion around A with absent activations set to 0; w_k averages
    it over places as Grad-CAM averages g. On a ReLU network the logit is piecewise linear in
    A, its Hessian is 0 and the map would be Grad-CAM's: the paper's ReST (Residual Softmax
    Target-class) utility, the logit plus the log-probability, brings softmax's curvature in,
    and is what class indices explain here. pytorch-grad-cam's ShapleyCAM uses whatever
    target it is given (the logit by default; ClassifierOutputReST is this utility). A
    targets callable that returns scores is differentiated as it is.
    """

    name = "shapleycam"

    def _maps_from(self, logits: Tensor, store: dict[str, Tensor], specs: list[Any]) -> RawMaps:
        acts = self._acts(logits, store)
        targets = [self._resolve(spec, logits, want_scores=True) for spec in specs]
        log_probs = logits.float().log_softmax(1)  # (N, K), in the graph
        maps: list[list[Tensor]] = []
        for target in targets:
            utility = target.scores
            if target.indices is not None:  # ReST: y_c + log p_c
                utility = utility + log_probs.gather(1, target.indices[:, None])[:, 0]
            grads = torch.autograd.grad(
                utility.sum(), acts, create_graph=True, retain_graph=True, allow_unused=True
            )
            unused = [name for name, g in zip(self.layers, grads, strict=True) if g is None]
            if unused:
                raise RuntimeError(f"layers {unused} do not influence the target scores")
            layer_maps = []
            for a, g in zip(acts, grads, strict=True):
                hvp = None
                if g.requires_grad:  # else u is linear in A and H A = 0
                    (hvp,) = torch.autograd.grad(
                        g, a, grad_outputs=a.detach(), retain_graph=True, allow_unused=True
                    )
                g = g.detach().float()
                if hvp is not None:
                    g = g - 0.5 * hvp.float()  # the gradient minus half the Hessian times A
                weights = g.mean((2, 3))  # (N, C, h, w) -> (N, C)
                layer_maps.append(torch.einsum("nc,nchw->nhw", weights, a.detach().float()))
            maps.append(layer_maps)
        # drop the scores so that nothing kept refers to this chunk's graph
        kept = [Resolved(t.indices, t.versus, None) for t in targets]
        return RawMaps(logits.detach().float(), kept, maps)
