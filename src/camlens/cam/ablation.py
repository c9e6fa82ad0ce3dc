"""Ablation-CAM: weights from forward passes with one channel of the hooked layer zeroed.

Only the layers after the hooked one run again: a forward hook replaces the layer's output
with a batch of ablated copies of its activations while the model is called on an empty
batch, so everything below the layer costs nothing. A model that combines the layer's output
with tensors from below it (a skip connection around a layer inside a residual block) cannot
be run that way; there the ablated copies ride on a forward pass of their images, and the
layers below run again. The first pass of each layer, the un-ablated activations, tells
which of the two a model needs.

Any layout (camlens.cam.layout): the ablated copies go back into the layer's own layout, so an
NHWC stage gets (B, h, w, C) copies and a token layer (B, T, C) tokens, channel k zeroed at
every patch token and the prefix tokens (class, registers) as they were: ablation in token
space, what the layers after a ViT block expect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from camlens.cam.base import Engine, RawMaps
from camlens.cam.layout import Reading, logits_of

__all__ = ["AblationCAM"]


@contextlib.contextmanager
def _output_replaced(module: nn.Module, acts: Tensor) -> Iterator[None]:
    """For one forward pass, `module` returns `acts` whatever its input (in a tuple output,
    as its first element)."""

    def hook(m: nn.Module, inputs: Any, output: Any) -> Any:
        return (acts, *output[1:]) if isinstance(output, tuple) else acts

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class AblationCAM(Engine):
    """Ablation-CAM, Desai & Ramaswamy 2020 (WACV, doi:10.1109/WACV45572.2020.9093360).

    L = ReLU(sum_k w_k A_k), w_k = (y_c - y_c^k) / |y_c|, y_c^k the score with A_k set to 0.

    w_k is the paper's slope, the relative drop of the class score (the logit) when
    channel k is ablated. The paper divides by y_c, which it takes as positive; the logit of a
    class the model rejects (the true class of a mistake) is often negative, and dividing by it
    would flip every weight and the map: camlens divides by |y_c| (the same where y_c > 0).
    pytorch-grad-cam divides by y_c and, when the layer's output has negative values, ablates
    with min(A) - 1e7 instead of 0. A channel that is zero everywhere cannot change the score:
    it weighs 0 and costs no pass. `AblationKnobs.batch` ablated copies go through the layers
    after the hooked one per pass.
    """

    name = "ablationcam"
    needs_indices = True

    def _raw_chunk(self, images: Tensor, specs: list[Any]) -> RawMaps:
        readings: dict[str, tuple[Reading, Tensor]] = {}
        logits, store, targets = self._clean_forward(images, specs, readings)
        maps: list[list[Tensor]] = [[] for _ in targets]
        for name, module in self.layers.items():
            acts = store[name]
            n, c = acts.shape[:2]
            drops = self._drops(images, module, acts, logits, *readings[name])  # (N, C, K)
            with torch.autocast(images.device.type, enabled=False):  # maps in float32
                scores = logits.float()
                for s, target in enumerate(targets):
                    drop = drops.gather(2, target.indices[:, None, None].expand(n, c, 1))[..., 0]
                    score = scores.gather(1, target.indices[:, None])  # (N, 1)
                    weights = drop / torch.where(score != 0, score.abs(), 1.0)  # the slope
                    maps[s].append(torch.einsum("nc,nchw->nhw", weights, acts.float()))
        return RawMaps(logits.detach().float(), targets, maps)

    def _drops(
        self,
        images: Tensor,
        module: nn.Module,
        acts: Tensor,
        logits: Tensor,
        reading: Reading,
        output: Tensor,
    ) -> Tensor:
        """(N, C, h, w) acts -> (N, C, K) logits minus the logits with channel k zeroed.

        `reading`, `output`: how the layer's `output` was read into `acts`, so that the ablated
        copies go back into its layout (with their images' prefix tokens)."""
        n, c = acts.shape[:2]
        flat = acts.flatten(2)
        # pairs (image, channel) whose channel is not all zero, as flat indices i*C + k: (M,)
        live = (flat.abs().amax(2) > 0).flatten().nonzero().flatten()
        ablated = torch.zeros(n * c, logits.shape[1], device=acts.device)
        with torch.no_grad(), self._forward_context(images.device):
            below = self._below(images, module, reading.from_map(acts, output), logits)
            for start in range(0, len(live), self.knobs.batch):
                part = live[start : start + self.knobs.batch]
                copies = acts[part // c].clone()  # (B, C, h, w)
                copies[torch.arange(len(part), device=acts.device), part % c] = 0
                inputs = images[part // c] if below else images[:0]
                # (B, C, h, w) -> the layer's layout, each copy with its image's prefix tokens
                copies = reading.from_map(copies, output[part // c])
                with _output_replaced(module, copies):
                    ablated[part] = logits_of(self.model(inputs)).float()
        drops = logits.float()[:, None] - ablated.view(n, c, -1)  # (N, 1, K) - (N, C, K)
        # an unscored channel's logits are the image's own: its drop is 0
        dead = torch.ones(n * c, dtype=torch.bool, device=acts.device)
        dead[live] = False
        return drops.masked_fill(dead.view(n, c, 1), 0.0)

    def _below(self, images: Tensor, module: nn.Module, output: Tensor, logits: Tensor) -> bool:
        """Whether the layers after `module` need the layers below it run again (a skip);
        `output`: the layer's un-ablated output, in its own layout."""
        try:
            with _output_replaced(module, output):
                tail = logits_of(self.model(images[:0]))
        # e.g. a skip connection's (0, ...) tensor meets the (N, ...) acts (RuntimeError), or a
        # model that checks its batch (AssertionError, ValueError, IndexError)
        except Exception:
            return True
        if not isinstance(tail, Tensor) or tail.shape != logits.shape:
            return True
        scale = float(logits.float().abs().amax()) or 1.0
        return not torch.allclose(tail.float(), logits.float(), rtol=0, atol=1e-3 * scale)
