"""Where maps are read from: layers by dotted name, hooks for one call, eval mode, upsampling.

Hooks exist only during a call (registered inside `capture`, removed in its `finally`), so an
engine holds no hooks between calls; `with` and `close()` are there so that callers need not
know that.

A layer that outputs tokens (N, T, C), as a vision transformer's blocks do, is read as the
(N, C, h, w) map of its last h*w tokens (`token_grid`): the prefix tokens (class,
distillation, registers) come from the model's own `num_prefix_tokens` where it has one (timm
names it so), else T - h*w with h*w the largest square; a model's `tokens_grid = (h, w)`
fixes the grid. `candidate_layers` finds, with one forward of a dummy batch, the layers a map
can be read from, and `pick_layer` the last of them before the global pooling.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Candidate",
    "capture",
    "candidate_layers",
    "eval_mode",
    "find_layer",
    "pick_layer",
    "resolve_layers",
    "token_grid",
    "upsample",
]


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
            tokens = isinstance(output, Tensor) and output.ndim == 3
            if not isinstance(output, Tensor) or output.ndim not in (3, 4):
                got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise TypeError(
                    f"layer {name!r} must output a (N, C, h, w) map or (N, T, C) tokens, got {got}"
                )
            a = output
            if tokens:
                prefix, h, w = token_grid(model, name, output.shape[1])
                # (N, T, C) -> (N, C, h, w): the prefix tokens are no place in the image
                a = output[:, prefix:].unflatten(1, (h, w)).permute(0, 3, 1, 2)
            if record:
                torch.set_grad_enabled(True)
                a = a if a.requires_grad else a.detach().requires_grad_()
            else:
                a = a.detach()
            acts[name] = a  # a layer called twice keeps its last output
            if tokens:
                # the tokens rebuilt from `a`, so that d(score)/d(acts) flows through the map;
                # (N, C, h, w) -> (N, h*w, C), after the prefix tokens as they came
                grid = a.permute(0, 2, 3, 1).flatten(1, 2)
                return torch.cat([output[:, :prefix], grid], 1)
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


def token_grid(model: nn.Module, name: str, count: int) -> tuple[int, int, int]:
    """(prefix, h, w) of a layer's `count` tokens: the prefix tokens first, then h*w places.

    The model's own `num_prefix_tokens` and `tokens_grid` win; otherwise the grid is the
    largest square that fits and the prefix what is left.
    """
    prefix = getattr(model, "num_prefix_tokens", None)
    grid = getattr(model, "tokens_grid", None)
    if grid is None:
        side = math.isqrt(count - (prefix or 0))
        grid = (side, side)
    h, w = grid
    prefix = count - h * w if prefix is None else prefix
    if prefix < 0 or prefix + h * w != count or h * w < 1:
        raise ValueError(
            f"layer {name!r} outputs {count} tokens, which are not {prefix} prefix tokens and a "
            f"{h}x{w} grid: pass --tokens-grid HxW and --prefix-tokens K that add up to {count}"
        )
    return prefix, h, w


@dataclass(frozen=True)
class Candidate:
    """A layer a map can be read from, as one forward of a dummy batch found it."""

    name: str  # dotted name
    shape: tuple[int, ...]  # its output's shape without the batch: (C, h, w) or (T, C)
    grid: tuple[int, int, int] | None  # tokens only: (prefix, h, w)
    reaches_logits: bool  # the logits depend on its map (not only on pooled or prefix tokens)
    misfit: str | None = None  # tokens that do not fit the prefix and grid: why (no map)

    def describe(self) -> str:
        if self.misfit is not None:
            return f"{self.name}  tokens {self.shape}: do not fit ({self.misfit})"
        if self.grid is None:
            c, h, w = self.shape
            return f"{self.name}  ({c}, {h}, {w})"
        prefix, h, w = self.grid
        return f"{self.name}  tokens {self.shape}: {prefix} prefix dropped, {h}x{w} grid"


def candidate_layers(model: nn.Module, image_size: int) -> list[Candidate]:
    """Every layer whose output is a spatial map (N, C, h, w), h*w > 1, or tokens (N, T, C),
    in the order their outputs are finished; one forward and one backward of a dummy batch."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)  # drawn on the CPU, then moved: the same on any device
    images = torch.rand(2, 3, image_size, image_size, generator=g, device="cpu")
    found: dict[str, tuple[Tensor, tuple[int, int, int] | None]] = {}
    misfits: dict[str, str] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            if not isinstance(output, Tensor) or not output.is_floating_point():
                return None
            grid = None
            if output.ndim == 4:  # a map: square like the images, (N, heads, T, d) is not
                h, w = output.shape[-2:]
                if h * w < 2 or h != w or h > image_size:
                    return None
            elif output.ndim == 3 and output.shape[1] > 1:
                try:
                    grid = token_grid(model, name, output.shape[1])
                except ValueError as e:  # kept: a wrong --prefix-tokens must not go unseen
                    misfits[name] = str(e)
            else:
                return None
            found.pop(name, None)  # a layer called twice: its last output
            found[name] = (output, grid)
            return output.clone()  # in-place ops downstream must not touch what is kept

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if n]
    try:
        with eval_mode(model), torch.enable_grad():
            logits = model(images.to(device).requires_grad_())
            outputs = [out for out, _ in found.values()]
            grads = torch.autograd.grad(logits.sum(), outputs, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    candidates = []
    for (name, (out, grid)), g in zip(found.items(), grads, strict=True):
        if name in misfits:
            candidates.append(Candidate(name, tuple(out.shape[1:]), None, False, misfits[name]))
            continue
        if grid is not None and g is not None:
            g = g[:, grid[0] :]  # the grid's tokens, not the prefix
        candidates.append(
            Candidate(name, tuple(out.shape[1:]), grid, g is not None and bool(g.abs().sum() > 0))
        )
    return candidates


def pick_layer(model: nn.Module, image_size: int) -> Candidate:
    """The last layer before the global pooling: the last candidate the logits depend on
    with the shape of the model's last map or tokens, its feature stream (so a ViT gets its
    last block's norm1, not that block's (T, 3C) qkv projection)."""
    found = candidate_layers(model, image_size)
    reaching = [c for c in found if c.reaches_logits]
    if not reaching:
        raise ValueError(
            f"{type(model).__name__} has no layer whose output is a (N, C, h, w) map or "
            "(N, T, C) tokens that its logits depend on: name one with --layer"
        )
    stream = [c for c in reaching if c.shape == found[-1].shape]
    picked = (stream or reaching)[-1]
    later = found[found.index(picked) + 1 :]
    misfit = next((c.misfit for c in reversed(later) if c.misfit is not None), None)
    if misfit is not None:  # the layers after the pick may be the ones meant, read wrongly
        raise ValueError(misfit)
    return picked
