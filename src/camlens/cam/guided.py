"""Guided Grad-CAM: Grad-CAM times guided backpropagation, on the input-resolution base.

Guided backpropagation needs every ReLU of the model, also those a module hides (the ResNet's
blocks call F.relu): `Guide.recording` is a TorchFunctionMode that sees each ReLU call during
the forward pass and hooks its output's gradient; the hooks are removed when the call ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from camlens.cam.base import RawMaps, Resolved, upsample
from camlens.cam.pixel import InputCAM, grads_or_zeros

__all__ = ["Guide", "GuidedGradCAM", "guided_relus"]

RELUS = (
    torch.nn.functional.relu,
    torch.nn.functional.relu_,
    torch.relu,
    torch.relu_,
    Tensor.relu,
    Tensor.relu_,
)


class Guide:
    """Gradient hooks on ReLU outputs: clamp the gradient at 0 while `on`, so that ReLU's own
    backward then passes only positive gradients where its input was positive (guided
    backpropagation, Springenberg et al. 2015); plain gradients while off."""

    def __init__(self) -> None:
        self.on = False
        self.handles: list[Any] = []

    def recording(self) -> TorchFunctionMode:
        """While active, every ReLU call (nn.ReLU, F.relu, torch.relu, Tensor.relu, in place or
        not) gets its output hooked: a TorchFunctionMode sees the calls modules hide."""
        return _Recorder(self)

    def hook(self, grad: Tensor) -> Tensor:
        return grad.clamp_min(0) if self.on else grad


class _Recorder(TorchFunctionMode):
    def __init__(self, guide: Guide) -> None:
        super().__init__()
        self.guide = guide

    def __torch_function__(self, func: Callable, types: Any, args: Any = (), kwargs: Any = None):
        out = func(*args, **(kwargs or {}))
        if func in RELUS and isinstance(out, Tensor) and out.requires_grad:
            self.guide.handles.append(out.register_hook(self.guide.hook))
        return out


@contextlib.contextmanager
def guided_relus() -> Iterator[Guide]:
    """A `Guide` whose hooks are removed on exit, also when the call fails."""
    guide = Guide()
    try:
        yield guide
    finally:
        for handle in guide.handles:
            handle.remove()


class GuidedGradCAM(InputCAM):
    """Guided Grad-CAM, Selvaraju et al. 2017 (arXiv:1610.02391), sec. 3.

    L = up(ReLU(sum_k w_k A_k)) * max_c |G_c|: Grad-CAM at the named layer, bilinearly
    upsampled, times guided backpropagation G = the input gradient with every ReLU passing
    only positive gradients (Springenberg et al. 2015), reduced over colour channels by
    max |.| (Simonyan et al. 2014's saliency map; the paper shows G's channels as colour).

    One forward pass, two backwards: the plain gradient at the layer, then the guided one at
    the image. ReLUs are found by `Guide.recording`, a TorchFunctionMode alive for the forward
    pass: nn.ReLU, F.relu, torch.relu and Tensor.relu, in place or not, in any module; their
    hooks are removed when the call ends. Not covered: ReLUs the Python dispatcher never
    sees (TorchScript or compiled graphs, fused conv-ReLU modules, C++ extensions) and other
    activations (ReLU6, LeakyReLU, GELU, clamp), whose gradients pass unguided.
    """

    name = "guidedgradcam"

    def _raw_chunk(self, images: Tensor, specs: list[Any]) -> RawMaps:
        with guided_relus() as self._guide:  # the hooks live for the forward and backwards
            return super()._raw_chunk(images, specs)

    def _during_forward(self) -> contextlib.AbstractContextManager:
        return self._guide.recording()

    def _input_maps(
        self, images: Tensor, store: dict[str, Tensor], target: Resolved, retain: bool
    ) -> list[Tensor]:
        acts = [store[name] for name in self.layers]
        self._guide.on = False
        grads = grads_or_zeros(target.scores.sum(), acts, retain=True)
        self._guide.on = True
        (guided,) = grads_or_zeros(target.scores.sum(), [images], retain)
        saliency = guided.abs().amax(1)  # (N, 3, H, W) -> (N, H, W)
        size = tuple(images.shape[-2:])
        maps = []
        for a, g in zip(acts, grads, strict=True):
            weights = g.mean((2, 3))  # Grad-CAM's eq. 1: (N, C, h, w) -> (N, C)
            cam = torch.einsum("nc,nchw->nhw", weights, a.detach().float()).clamp_min(0)
            maps.append(upsample(cam, size) * saliency)
        return maps
