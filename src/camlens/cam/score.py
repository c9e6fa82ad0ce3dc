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

    L = ReLU(sum_k a_k A_k), a_k = softmax(f(X * H_k))_c, H_k = A_k upsampled, min-max scaled.
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
            probs, channels = self._scores(images, acts, logits.shape[1])  # the model's passes
            k = channels.shape[1]
            n, _, h, w = acts.shape
            # (N, C, h, w) -> (N, k, h, w): the activations of the scored channels
            kept = acts.gather(1, channels[:, :, None, None].expand(n, k, h, w))
            with torch.autocast(images.device.type, enabled=False):  # maps in float32
                for s, target in enumerate(targets):
                    index = target.indices[:, None, None].expand(n, k, 1)
                    alpha = probs.gather(2, index)[..., 0]  # (N, k, K) -> (N, k)
                    maps[s].append(torch.einsum("nk,nkhw->nhw", alpha, kept))  # eq. 4, no ReLU
        return RawMaps(logits.detach().float(), targets, maps)

    def _scores(self, images: Tensor, acts: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        """Softmax of every masked image: (N, k, K) and the channels used (N, k)."""
        n, c = acts.shape[:2]
        k = min(self.config.top_k or c, c)
        if k < c:
            # Faster Score-CAM: channels whose map varies most carry the most spatial signal
            channels = acts.flatten(2).var(2).topk(k, dim=1).indices  # (N, C) -> (N, k)
        else:
            channels = torch.arange(c, device=acts.device).expand(n, c)
        flat_image = torch.arange(n, device=acts.device).repeat_interleave(k)  # (N*k,)
        flat_channel = channels.reshape(-1)  # (N, k) -> (N*k,)
        probs = torch.empty(n * k, num_classes, device=acts.device)
        size = tuple(images.shape[-2:])
        step = self.config.score_batch
        with torch.no_grad(), self._forward_context(images.device):
            for start in range(0, n * k, step):
                i, ch = flat_image[start : start + step], flat_channel[start : start + step]
                masks = upsample(acts[i, ch], size)  # (B, h, w) -> (B, H, W)
                lo = masks.amin((1, 2), keepdim=True)
                span = masks.amax((1, 2), keepdim=True) - lo
                # a flat channel masks everything out rather than dividing by zero
                masks = torch.where(span > 0, (masks - lo) / span.clamp_min(1e-30), 0.0)
                masked = images[i] * masks[:, None].to(images.dtype)  # (B, 3, H, W)
                probs[start : start + step] = self.model(masked).float().softmax(1)
        return probs.view(n, k, num_classes), channels
