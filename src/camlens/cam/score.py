"""Score-CAM: weights from extra forward passes on masked images, so its own small base.

`ScoreCAM(model, layer, score_batch=64, top_k=None)`: the masked images of all (image, channel)
pairs go through the model `score_batch` at a time; `top_k` keeps only each image's k
highest-variance channels (Faster Score-CAM). The masked passes are shared by every target
set of one call, so `explain_many(images, [preds, labels])` costs no more than one set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from camlens.cam.base import Engine, RawMaps, capture, upsample

__all__ = ["ScoreCAM"]


class ScoreCAM(Engine):
    """Score-CAM, Wang et al. 2020 (arXiv:1910.01279); no gradients.

    L = ReLU(sum_k a_k A_k), a_k = f(X o H_k) - f(X_b), H_k = A_k upsampled, min-max scaled.

    a_k is the paper's channel-wise increase of confidence (Definition 2) with X_b the all-zero
    image, which is what a mask of zeros leaves of X. f is the target class's softmax
    probability, as in the authors' code, which leaves out f(X_b): camlens keeps it, since
    without it every a_k carries f(X_b) and every map gains f(X_b) sum_k A_k, the same for all
    classes. A flat channel (A_k constant) has no region to keep: it weighs 0 and costs no
    pass, as the authors' code skips it.
    """

    name = "scorecam"
    needs_indices = True

    def _raw_chunk(self, images: Tensor, specs: list[Any]) -> RawMaps:
        with (
            torch.no_grad(),
            capture(self.model, self.layers, record=False) as store,
            self._forward_context(images.device),
        ):
            logits = self.model(images)
        missing = [name for name in self.layers if name not in store]
        if missing:
            raise RuntimeError(f"layers {missing} were not called in the model's forward pass")
        targets = [self._resolve(spec, logits, want_scores=False) for spec in specs]
        maps: list[list[Tensor]] = [[] for _ in targets]
        for name in self.layers:
            acts = store[name].float()
            n, c, h, w = acts.shape
            k = min(self.config.top_k or c, c)
            if k < c:
                # Faster Score-CAM: channels whose map varies most carry the most spatial signal
                channels = acts.flatten(2).var(2).topk(k, dim=1).indices  # (N, C) -> (N, k)
            else:
                channels = torch.arange(c, device=acts.device).expand(n, c)
            # (N, C, h, w) -> (N, k, h, w): the activations of the scored channels
            kept = acts.gather(1, channels[:, :, None, None].expand(n, k, h, w))
            gains = self._gains(images, kept, logits.shape[1])  # the model's passes
            with torch.autocast(images.device.type, enabled=False):  # maps in float32
                for s, target in enumerate(targets):
                    index = target.indices[:, None, None].expand(n, k, 1)
                    alpha = gains.gather(2, index)[..., 0]  # (N, k, K) -> (N, k)
                    maps[s].append(torch.einsum("nk,nkhw->nhw", alpha, kept))  # eq. 4, no ReLU
        return RawMaps(logits.detach().float(), targets, maps)

    def _gains(self, images: Tensor, kept: Tensor, num_classes: int) -> Tensor:
        """(N, k, h, w) channels -> (N, k, K) softmax(f(X o H)) - softmax(f(X_b)); 0 if flat."""
        n, k = kept.shape[:2]
        flat_maps = kept.flatten(0, 1)  # (N, k, h, w) -> (N*k, h, w)
        scored = (flat_maps.amax((1, 2)) > flat_maps.amin((1, 2))).nonzero().flatten()  # (M,)
        gains = torch.zeros(n * k, num_classes, device=kept.device)
        size = tuple(images.shape[-2:])
        step = self.config.score_batch
        with torch.no_grad(), self._forward_context(images.device):
            baseline = self.model(torch.zeros_like(images[:1])).float().softmax(1)  # (1, K)
            for start in range(0, len(scored), step):
                part = scored[start : start + step]
                masks = upsample(flat_maps[part], size)  # (B, h, w) -> (B, H, W)
                lo = masks.amin((1, 2), keepdim=True)
                masks = (masks - lo) / (masks.amax((1, 2), keepdim=True) - lo).clamp_min(1e-30)
                masked = images[part // k] * masks[:, None].to(images.dtype)  # (B, 3, H, W)
                gains[part] = self.model(masked).float().softmax(1) - baseline
        return gains.view(n, k, num_classes)
