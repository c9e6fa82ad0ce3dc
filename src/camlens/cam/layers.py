"""Where maps are read from: layers by dotted name, hooks for one call, eval mode, upsampling.

Hooks exist only during a call (registered inside `capture`, removed in its `finally`), so an
engine holds no hooks between calls; `with` and `close()` are there so that callers need not
know that.

Each hooked output is read into (N, C, h, w) in its layout (camlens.cam.layout: NCHW, NHWC as
timm's Swin stages give, or a ViT's tokens (N, T, C), whose last h*w tokens are the grid
after the prefix tokens: the class, distillation and register tokens, from the model's own
`num_prefix_tokens` where it has one (timm names it so), else T - h*w with h*w the largest
grid of the input's aspect; a model's `tokens_grid = (h, w)` fixes the grid), and the map is
handed on in that layout. `candidate_layers` finds, with one forward of a dummy batch, the
layers a map can be read from, and `pick_layer` the last of them before the global pooling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camlens.cam.layout import (
    LAYOUTS,
    LayoutError,
    Reading,
    first_tensor,
    logits_of,
    read_layout,
    token_grid,
)

__all__ = [
    "LAYOUTS",
    "Candidate",
    "LayoutError",
    "Reading",
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
    model: nn.Module,
    layers: dict[str, nn.Module],
    record: bool,
    layout: str | dict[str, str] = "auto",
    readings: dict[str, tuple[Reading, Tensor]] | None = None,
) -> Iterator[dict[str, Tensor]]:
    """Hook `layers` for one forward pass; yields name -> the layer's output (`acts`) read as
    (N, C, h, w) (`read_layout`: NCHW, NHWC or tokens).

    `layout`: one of LAYOUTS for every layer, or per layer name ("auto" where not named).
    `readings`, when given, gets name -> (how the output was read, the output detached): what
    a method that puts maps back into the layer (Ablation-CAM) needs. A layer that outputs a
    tuple (a Hugging Face layer's) is read from its first element.

    With `record`, grad mode is switched on at the first hooked layer: nothing computed before
    it is needed for d(score)/d(acts), so the network up to there runs as plain inference (run
    the forward under `torch.no_grad()`, whose exit restores the caller's mode). An output with
    no graph (frozen parameters, input without grad) becomes a leaf that requires grad.
    """
    acts: dict[str, Tensor] = {}
    image: list[tuple[int, int]] = []  # the model's input (H, W), for reading the layouts

    def see_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        given = [*args, *kwargs.values()]
        x = next((t for t in given if isinstance(t, Tensor) and t.ndim == 4), None)
        image[:] = [] if x is None else [tuple(x.shape[-2:])]

    def hook_for(name: str):
        forced = layout if isinstance(layout, str) else layout.get(name, "auto")

        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            out = first_tensor(output)
            if out is None or out.ndim not in (3, 4):
                got = tuple(out.shape) if out is not None else type(output).__name__
                raise TypeError(
                    f"layer {name!r} must output a (N, C, h, w) map or (N, T, C) tokens, got {got}"
                )
            reading = read_layout(model, module, name, out, image[0] if image else None, forced)
            a = reading.to_map(out)  # (N, C, h, w), a view of the output where it can be
            if record:
                torch.set_grad_enabled(True)
                a = a if a.requires_grad else a.detach().requires_grad_()
            else:
                a = a.detach()
            acts[name] = a  # a layer called twice keeps its last output
            if readings is not None:
                readings[name] = (reading, out.detach())
            # the output rebuilt from `a`, so that d(score)/d(acts) flows through the map
            new = reading.from_map(a, out)
            return new if out is output else _with_first(output, new)

        return hook

    handles = [model.register_forward_pre_hook(see_input, with_kwargs=True)]
    try:
        for name, module in layers.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield acts
    finally:
        for handle in handles:
            handle.remove()


def _with_first(output: tuple | list, first: Tensor) -> tuple | list:
    """A tuple or list output with its first element replaced."""
    return [first, *output[1:]] if isinstance(output, list) else (first, *output[1:])


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, h, w) -> (N, H, W) bilinear; the input's resolution is what a map is shown at."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@dataclass(frozen=True)
class Candidate:
    """A layer a map can be read from, as one forward of a dummy batch found it."""

    name: str  # dotted name
    shape: tuple[int, ...]  # its output's shape without the batch: (C, h, w), (h, w, C), (T, C)
    grid: tuple[int, int, int] | None  # tokens only: (prefix, h, w)
    reaches_logits: bool  # the logits depend on its map (not only on pooled or prefix tokens)
    misfit: str | None = None  # tokens that do not fit the prefix and grid: why (no map)
    layout: str = "nchw"  # how its output is read (camlens.cam.layout.LAYOUTS)

    def describe(self) -> str:
        """The layer, its output's shape and the layout it is read in, on one line."""
        if self.misfit is not None:
            return f"{self.name}  tokens {self.shape}: do not fit ({self.misfit})"
        if self.grid is not None:
            prefix, h, w = self.grid
            return f"{self.name}  {Reading('tokens', (h, w), prefix).describe(self.shape)}"
        h, w = self.shape[:2] if self.layout == "nhwc" else self.shape[1:]
        return f"{self.name}  {Reading(self.layout, (h, w)).describe(self.shape)}"


def candidate_layers(model: nn.Module, image_size: int, layout: str = "auto") -> list[Candidate]:
    """Every layer whose output is a spatial map (N, C, h, w) or (N, h, w, C), h*w > 1, or
    tokens (N, T, C), in the order their outputs are finished; one forward and one backward
    of a dummy batch. `layout` (LAYOUTS): how each output is read; "auto" from the output and
    the model (`read_layout`), a forced one keeps only the outputs it can read."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)  # drawn on the CPU, then moved: the same on any device
    images = torch.rand(2, 3, image_size, image_size, generator=g, device="cpu")
    found: dict[str, tuple[Tensor, Reading | None]] = {}
    misfits: dict[str, str] = {}
    modules = dict(model.named_modules())

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            out = first_tensor(output)
            # a map or tokens of this batch: not (N windows, ...) nor a feature vector
            if out is None or not out.is_floating_point() or out.ndim not in (3, 4):
                return None
            if out.shape[0] != images.shape[0] or (out.ndim == 3 and out.shape[1] < 2):
                return None
            try:
                reading = read_layout(model, module, name, out, (image_size,) * 2, layout)
            except LayoutError as e:
                if out.ndim != 3 or layout not in ("auto", "tokens"):
                    return None  # (N, heads, T, d) and the like: no map of the image
                misfits[name] = str(e)  # kept: a wrong --prefix-tokens must not go unseen
                reading = None
            if reading is not None and reading.resolution[0] * reading.resolution[1] < 2:
                return None
            found.pop(name, None)  # a layer called twice: its last output
            found[name] = (out, reading)
            kept = out.clone()  # in-place ops downstream must not touch what is kept
            return kept if out is output else _with_first(output, kept)

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items() if n]
    try:
        with eval_mode(model), torch.enable_grad():
            logits = logits_of(model(images.to(device).requires_grad_()))
            outputs = [out for out, _ in found.values()]
            grads = torch.autograd.grad(logits.sum(), outputs, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    candidates = []
    for (name, (out, reading)), g in zip(found.items(), grads, strict=True):
        if reading is None:
            candidates.append(Candidate(name, tuple(out.shape[1:]), None, False, misfits[name]))
            continue
        grid = None
        if reading.layout == "tokens":
            grid = (reading.prefix, *reading.resolution)
            g = None if g is None else g[:, reading.prefix :]  # the grid's tokens, not the prefix
        reaches = g is not None and bool(g.abs().sum() > 0)
        candidates.append(
            Candidate(name, tuple(out.shape[1:]), grid, reaches, layout=reading.layout)
        )
    return candidates


def pick_layer(model: nn.Module, image_size: int, layout: str = "auto") -> Candidate:
    """The last layer before the global pooling: the last candidate the logits depend on
    with the shape of the model's last map or tokens, its feature stream (so a ViT gets its
    last block's norm1, not that block's (T, 3C) qkv projection); among tokens, the last
    LayerNorm of that stream where there is one (not a (T, C) value projection)."""
    found = candidate_layers(model, image_size, layout)
    reaching = [c for c in found if c.reaches_logits]
    if not reaching:
        raise ValueError(
            f"{type(model).__name__} has no layer whose output is a (N, C, h, w) map or "
            "(N, T, C) tokens that its logits depend on: name one with --layer"
        )
    stream = [c for c in reaching if c.shape == found[-1].shape]
    picked = (stream or reaching)[-1]
    if picked.layout == "tokens":  # a block's norm, not the value projection inside its
        modules = dict(model.named_modules())  # attention (Hugging Face's v_proj) after it
        norms = [c for c in stream if isinstance(modules[c.name], nn.LayerNorm)]
        picked = norms[-1] if norms else picked
    later = found[found.index(picked) + 1 :]
    misfit = next((c.misfit for c in reversed(later) if c.misfit is not None), None)
    if misfit is not None:  # the layers after the pick may be the ones meant, read wrongly
        raise ValueError(misfit)
    return picked
