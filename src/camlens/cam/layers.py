"""Where maps are read from: layers by dotted name, hooks for one call, eval mode, upsampling.

Hooks exist only during a call (registered inside `capture`, removed in its `finally`), so an
engine holds no hooks between calls; `with` and `close()` are there so that callers need not
know that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["capture", "eval_mode", "find_layer", "resolve_layers", "upsample"]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted name (`layer4`, `layer4.1.conv2`); unknown names list the valid."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    valid = ", ".join(n for n in modules if n)
    raise KeyError(f"no layer named {name!r} in {type(model).__name__}; valid names: {valid}")


def _layer_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module and name:
            return name
    raise KeyError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def resolve_layers(
    model: nn.Module, layer: str | nn.Module | Sequence[str | nn.Module]
) -> dict[str, nn.Module]:
    """Dotted name -> module for `layer=` given as a name, a module or a list of them."""
    items = [layer] if isinstance(layer, (str, nn.Module)) else list(layer)
    if not items:
        raise ValueError("layer must name at least one layer")
    layers: dict[str, nn.Module] = {}
    for item in items:
        if isinstance(item, str):
            name, module = item, find_layer(model, item)
        elif isinstance(item, nn.Module):
            name, module = _layer_name(model, item), item
        else:
            raise TypeError(
                f"layer must be a dotted name or an nn.Module, got {type(item).__name__}"
            )
        if name in layers:
            raise ValueError(f"layer {name!r} is given twice")
        layers[name] = module
    return layers


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the call; each module's own flag back afterwards (they may differ)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def capture(
    model: nn.Module, layers: dict[str, nn.Module], record: bool
) -> Iterator[dict[str, Tensor]]:
    """Hook `layers` for one forward pass; yields name -> the layer's output (`acts`).

    With `record`, grad mode is switched on at the first hooked layer: nothing computed before
    it is needed for d(score)/d(acts), so the network up to there runs as plain inference (run
    the forward under `torch.no_grad()`, whose exit restores the caller's mode). An output with
    no graph (frozen parameters, input without grad) becomes a leaf that requires grad.
    """
    acts: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor) or output.ndim != 4:
                got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise TypeError(f"layer {name!r} must output a (N, C, h, w) tensor, got {got}")
            if record:
                torch.set_grad_enabled(True)
                a = output if output.requires_grad else output.detach().requires_grad_()
            else:
                a = output.detach()
            acts[name] = a  # a layer called twice keeps its last output
            # In-place ops downstream (ReLU(inplace=True)) then change the clone, not `acts`.
            return a.clone()

        return hook

    handles = []
    try:
        for name, module in layers.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield acts
    finally:
        for handle in handles:
            handle.remove()


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, h, w) -> (N, H, W) bilinear; the input's resolution is what a map is shown at."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
