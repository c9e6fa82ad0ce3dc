"""Score-CAM and its variants: weights from extra forward passes on masked images.

`ScoreCAM(model, layer, knobs=ScoreKnobs(batch=64, top_k=None))`: the masked images of all
(image, channel) pairs go through the model `batch` at a time; `top_k` keeps only each image's k
highest-variance channels (Faster Score-CAM). The masked passes are shared by every target
set of one call, so `explain_many(images, [preds, labels])` costs no more than one set.

SS-CAM and IS-CAM change only which inputs a mask makes (`_masked`): `samples` of them
per (image, channel) pair, whose probabilities are averaged; a pass then holds the inputs of
`batch // samples` pairs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from camlens.cam.base import Engine, RawMaps, upsample

__all__ = ["ISCAM", "SSCAM", "ScoreCAM"]


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

    def _samples(self) -> int:
        """Masked inputs per (image, channel) pair, whose probabilities are averaged."""
        return 1

    def _masked(self, images: Tensor, masks: Tensor, low: tuple[int, int]) -> Tensor:
        """(B, 3, H, W) images, (B, H, W) masks in [0, 1] -> (S, B, 3, H, W) inputs: X o H_k.

        `low` is the (h, w) the masks were upsampled from.
        """
        return (images * masks[:, None])[None]

    def _raw_chunk(self, images: Tensor, specs: list[Any]) -> RawMaps:
        logits, store, targets = self._clean_forward(images, specs)
        maps: list[list[Tensor]] = [[] for _ in targets]
        for name in self.layers:
            acts = store[name].float()
            n, c, h, w = acts.shape
            k = min(self.knobs.top_k or c, c)
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
        samples = self._samples()
        step = max(1, self.knobs.batch // samples)
        with torch.no_grad(), self._forward_context(images.device):
            baseline = self.model(torch.zeros_like(images[:1])).float().softmax(1)  # (1, K)
            for start in range(0, len(scored), step):
                part = scored[start : start + step]
                masks = upsample(flat_maps[part], size)  # (B, h, w) -> (B, H, W)
                lo = masks.amin((1, 2), keepdim=True)
                masks = (masks - lo) / (masks.amax((1, 2), keepdim=True) - lo).clamp_min(1e-30)
                # (S, B, 3, H, W) -> (S*B, 3, H, W): every input of the part in one pass
                low = tuple(kept.shape[-2:])
                inputs = self._masked(images[part // k], masks.to(images.dtype), low)
                inputs = inputs.flatten(0, 1)
                probs = self.model(inputs).float().softmax(1)  # (S*B, K)
                gains[part] = probs.unflatten(0, (samples, len(part))).mean(0) - baseline
        return gains.view(n, k, num_classes)


class SSCAM(ScoreCAM):
    """SS-CAM, Wang et al. 2020 (arXiv:2006.14255): Score-CAM with noisy masks; no gradients.

    L = ReLU(sum_k a_k A_k), a_k = (1/S) sum_s f(X o U(A'_k + d_s)) - f(X_b), d_s ~ N(0, std^2).

    The smoothing on the feature maps (the paper's SS-CAM(1)): A'_k is channel k min-max
    scaled, d_s a noise field at the layer's (h, w), U the bilinear upsampling (linear, so the
    code adds U(d_s) to Score-CAM's upsampled mask); S = `samples` (10, the paper's
    reported N), std = `std` (0.5). f and X_b as in camlens's Score-CAM (softmax
    probability, zero image). d_s comes from a CPU generator seeded with `seed`, as
    (S, h, w) fields shared by every image and channel: a map does not depend on the batch,
    the chunk or the device. Two departures from torchcam's SSCAM (std 2.0, noise per input
    pixel, fresh per image and channel): pixel noise of that size is a texture a CIFAR
    network reads as another class; every noisy input then scores below the zero image and
    every map of the shipped model came out flat (std 0.1 to 2.0 tried on 4 images); noise
    at the layer's resolution with std 0.5 keeps the maps (`benchmarks/cam_agreement.py`).
    torchcam also weighs channels by a softmax over channels of logit gains over the input's
    own logit (as its Score-CAM does), which cannot be flat.
    """

    name = "sscam"

    def _samples(self) -> int:
        return self.knobs.samples

    def _masked(self, images: Tensor, masks: Tensor, low: tuple[int, int]) -> Tensor:
        gen = torch.Generator().manual_seed(self.knobs.seed)
        noise = torch.randn((self._samples(), *low), generator=gen, device="cpu")
        noise = noise * self.knobs.std
        # (S, h, w) -> (S, H, W): the noise of the feature map, upsampled as the map is
        noise = upsample(noise, tuple(masks.shape[1:])).to(masks.device, masks.dtype)
        # (S, 1, H, W) + (1, B, H, W) -> (S, B, 1, H, W), times (B, 3, H, W) images
        return images * (noise[:, None] + masks[None])[:, :, None]


class ISCAM(ScoreCAM):
    """IS-CAM, Naidu et al. 2020 (arXiv:2010.03023): Score-CAM integrated along a path.

    L = ReLU(sum_k a_k A_k), a_k = (1/S) sum_{i=1..S} f(X o (i/S) H_k) - f(X_b).

    The Riemann sum, with S = `samples` steps (10), of f on the straight path from the
    baseline X_b = 0 to X o H_k, as Integrated Gradients integrates. The paper's mask for step
    i, as torchcam quotes it, is M_i = sum_{j<i} (j/S) H_k, and torchcam scales step i's mask
    by sum_{j<=i} j/S: both factors pass 1 (up to (S+1)/2), so those masks brighten the image
    beyond X itself; camlens keeps the path within [X_b, X o H_k]. f and X_b as in Score-CAM.
    """

    name = "iscam"

    def _samples(self) -> int:
        return self.knobs.samples

    def _masked(self, images: Tensor, masks: Tensor, low: tuple[int, int]) -> Tensor:
        s = self._samples()
        steps = torch.arange(1, s + 1, device=masks.device, dtype=masks.dtype) / s  # (S,)
        # (S, 1, 1, 1) x (1, B, H, W) -> (S, B, 1, H, W), times (B, 3, H, W) images
        return images * (steps[:, None, None, None] * masks[None])[:, :, None]
