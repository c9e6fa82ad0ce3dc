"""Maps at the input's resolution (FullGrad, Guided Grad-CAM): gradients reach the images.

Their own small base, `InputCAM(BaseCAM)`: one forward pass with the images requiring grad
and `_hooked()` modules captured, then per target set one `_input_maps` that takes what
gradients it needs. `layer=` keeps its meaning of every method, one map per named layer: the
layer is where the method's layer-dependent part is read (Guided Grad-CAM: its Grad-CAM
factor; FullGrad: the deepest layer whose bias terms are summed). Their maps come out at the
images' (H, W), so `low_res` and `resolutions` are (H, W) too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from camlens.cam.base import BaseCAM, RawMaps, Resolved, capture, upsample

__all__ = ["FullGrad", "GuidedGradCAM", "InputCAM", "bias_of", "guided_relus"]


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
        with (
            torch.enable_grad(),
            capture(self.model, self._hooked(), record=True) as store,
            self._forward_context(images.device),
            self._during_forward(),
        ):
            logits = self.model(x)
        with torch.enable_grad(), torch.autocast(images.device.type, enabled=False):
            self._acts(logits, store)  # checks that the named layers ran and the logits' shape
            targets = [self._resolve(spec, logits, want_scores=True) for spec in specs]
            maps = [
                self._input_maps(x, store, t, retain=i < len(targets) - 1)
                for i, t in enumerate(targets)
            ]
        kept = [replace(t, scores=None) for t in targets]  # nothing kept refers to the graph
        return RawMaps(logits.detach().float(), kept, maps)


def _grads(score: Tensor, inputs: list[Tensor], retain: bool) -> list[Tensor]:
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
        grads = _grads(target.scores.sum(), [images, *(store[n] for n in biased)], retain)
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


# -- Guided Grad-CAM --------------------------------------------------------------------------

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
        grads = _grads(target.scores.sum(), acts, retain=True)
        self._guide.on = True
        (guided,) = _grads(target.scores.sum(), [images], retain)
        saliency = guided.abs().amax(1)  # (N, 3, H, W) -> (N, H, W)
        size = tuple(images.shape[-2:])
        maps = []
        for a, g in zip(acts, grads, strict=True):
            weights = g.mean((2, 3))  # Grad-CAM's eq. 1: (N, C, h, w) -> (N, C)
            cam = torch.einsum("nc,nchw->nhw", weights, a.detach().float()).clamp_min(0)
            maps.append(upsample(cam, size) * saliency)
        return maps
