"""Maps at the input's resolution: their base `InputCAM`, and FullGrad (see also guided.py).

Their own small base, `InputCAM(BaseCAM)`: one forward pass with the images requiring grad
and `_hooked()` modules captured, then per target set one `_input_maps` that takes what
gradients it needs. `layer=` keeps its meaning of every method, one map per named layer: the
layer is where the method's layer-dependent part is read (Guided Grad-CAM: its Grad-CAM
factor; FullGrad: the deepest layer whose bias terms are summed). Their maps come out at the
images' (H, W), so `low_res` and `resolutions` are (H, W) too.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from camlens.cam.base import BaseCAM, RawMaps, Resolved, capture, upsample
from camlens.cam.layout import logits_of

__all__ = ["FullGrad", "InputCAM", "bias_of", "grads_or_zeros"]


class InputCAM(BaseCAM):
    """Base of the input-resolution methods: a subclass overrides `_input_maps` (and `_hooked`)."""

    def _hooked(self) -> dict[str, nn.Module]:
        """The modules whose outputs the forward pass records: the named layers by default."""
        return dict(self.layers)

    def _during_forward(self) -> contextlib.AbstractContextManager:
        """A context the forward pass runs in (Guided Grad-CAM's guided ReLUs)."""
        return contextlib.nullcontext()

    def _input_maps(
        self, images: Tensor, store: dict[str, Tensor], target: Resolved, retain: bool
    ) -> list[Tensor]:
        """Per named layer an (N, H, W) map, from `target.scores` (in the graph)."""
        raise NotImplementedError

    def _raw_chunk(self, images: Tensor, specs: list[Any]) -> RawMaps:
        x = images.detach().requires_grad_()
        layout = self.config.layout  # the named layers'; the biased ones are read as they come
        with (
            torch.enable_grad(),
            capture(self.model, self._hooked(), True, dict.fromkeys(self.layers, layout)) as store,
            self._forward_context(images.device),
            self._during_forward(),
        ):
            logits = logits_of(self.model(x))
        with torch.enable_grad(), torch.autocast(images.device.type, enabled=False):
            self._acts(logits, store)  # checks that the named layers ran and the logits' shape
            targets = [self._resolve(spec, logits, want_scores=True) for spec in specs]
            maps = [
                self._input_maps(x, store, t, retain=i < len(targets) - 1)
                for i, t in enumerate(targets)
            ]
        kept = [replace(t, scores=None) for t in targets]  # nothing kept refers to the graph
        return RawMaps(logits.detach().float(), kept, maps)


def grads_or_zeros(score: Tensor, inputs: list[Tensor], retain: bool) -> list[Tensor]:
    """d(score)/d(each input), detached float32; zeros for an input the score does not use."""
    grads = torch.autograd.grad(score, inputs, retain_graph=retain, allow_unused=True)
    # a tensor the score does not depend on has zero gradient, e.g. a bias after the logits
    pairs = zip(grads, inputs, strict=True)
    return [torch.zeros_like(t) if g is None else g.detach().float() for g, t in pairs]


# -- FullGrad ---------------------------------------------------------------------------------


def bias_of(module: nn.Module) -> Tensor | None:
    """(C,) the per-channel bias a module adds to its (N, C, h, w) output in eval mode, or None.

    Conv2d: its bias. BatchNorm2d with running statistics: the implicit bias beta - mu gamma /
    sqrt(var + eps) of x -> x gamma / sqrt(var + eps) + that. GroupNorm: beta only (its
    statistics are per image, so the paper's completeness does not hold there).
    """
    if isinstance(module, nn.Conv2d):
        return None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
        gamma = module.weight if module.affine else torch.ones_like(module.running_mean)
        beta = module.bias if module.affine else torch.zeros_like(module.running_mean)
        scale = gamma / torch.sqrt(module.running_var + module.eps)
        return (beta - module.running_mean * scale).detach()
    if isinstance(module, nn.GroupNorm) and module.affine:
        return module.bias.detach()
    return None


def _psi(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """The paper's post-processing of a (N, C, h, w) term: abs, min-max per image over all of
    (C, h, w) at once, bilinear upsampling to `size`; then summed over channels -> (N, H, W)."""
    maps = maps.abs()
    lo, hi = maps.amin((1, 2, 3), keepdim=True), maps.amax((1, 2, 3), keepdim=True)
    # a flat term has no place that stands out: 0, where the authors' eps would give ~0 too
    scaled = torch.where(hi > lo, (maps - lo) / (hi - lo).clamp_min(1e-30), 0.0)
    return upsample(scaled.sum(1), size)  # (N, C, h, w) -> (N, h, w) -> (N, H, W)


class FullGrad(InputCAM):
    """FullGrad, Srinivas & Fleuret 2019 (NeurIPS, arXiv:1905.00780), eq. 5-6.

    S = sum_c psi(dy/dx o x)_c + sum_l sum_c psi(dy/db_l o b_l)_c, psi = abs, min-max to [0, 1]
    over each term's (C, h, w), bilinear upsampling to the image; b_l the per-channel bias of
    layer l (`bias_of`: Conv2d biases and batch norm's implicit ones) over its output.

    The bias terms are those of the biased layers that finish before or with the named layer
    in the forward pass: `layer="layer4"` (the last conv stage of the ResNet) gives the
    paper's sum over every conv layer; a shallower layer leaves the deeper layers' (coarser)
    terms out. x is what the model takes ([0, 1] images); a normalisation inside `forward`
    that is not a module (camlens's ResNet subtracts its mean there) is a bias FullGrad does
    not see. psi scales a layer's channels together, as the authors' code does (without its
    eps = 1e-6; upsampled with align_corners=False, theirs True): scaled per channel, as
    pytorch-grad-cam does, |b_c| cancels and the bias values stop mattering at all.
    """

    name = "fullgrad"

    def _hooked(self) -> dict[str, nn.Module]:
        biased = {n: m for n, m in self.model.named_modules() if bias_of(m) is not None}
        return {**biased, **self.layers}

    def _input_maps(
        self, images: Tensor, store: dict[str, Tensor], target: Resolved, retain: bool
    ) -> list[Tensor]:
        modules = dict(self.model.named_modules())
        order = list(store)  # names in the order their modules finished in the forward pass
        deepest = max(order.index(name) for name in self.layers)
        biased = [n for n in order[: deepest + 1] if bias_of(modules[n]) is not None]
        grads = grads_or_zeros(target.scores.sum(), [images, *(store[n] for n in biased)], retain)
        size = tuple(images.shape[-2:])
        # eq. 5's input term: (N, 3, H, W) -> (N, H, W); then each bias term, in forward order
        terms = [_psi(grads[0] * images.detach().float(), size)]
        for name, g in zip(biased, grads[1:], strict=True):
            bias = bias_of(modules[name]).float()[None, :, None, None]
            terms.append(_psi(g * bias, size))  # (N, C, h, w) -> (N, H, W)
        total = torch.stack(terms).cumsum(0)  # (1 + B, N, H, W): the sum up to each term
        return [
            total[sum(n in biased for n in order[: order.index(layer) + 1])]
            for layer in self.layers
        ]
