"""How a hooked layer's output lies on the image: its layout, read into (N, C, h, w) and back.

Every method works on `acts` (N, C, h, w). Layers give that in three layouts (LAYOUTS):

    "nchw"    (N, C, h, w)   conv stages (torchvision, timm ResNet, EfficientNet, ConvNeXt stages)
    "nhwc"    (N, h, w, C)   channels-last stages: timm's Swin `layers.N`, blocks that permute
    "tokens"  (N, T, C)      a ViT's blocks: `prefix` tokens (class, distillation, registers)
                             first, then the h*w patch grid row by row

"auto" reads the layout from the output and the model (`read_layout`). A 4-D output is NCHW
when its last two axes lie on the image as a map of it does (h <= H, w <= W, h/w = H/W within
a pixel), NHWC when its middle two do; where both could (C = h = w) the layer's last weighted
module decides: a Linear or LayerNorm over the last axis writes channels last, anything else
(Conv2d, BatchNorm2d) channels first. Reading a Swin stage's (N, 4, 4, 768) as NCHW would make
a map of 4 x 768 "places" out of channels: nothing would say so, the map would just be wrong.
A 3-D output is tokens (`token_grid`). An output that fits no layout is a one-line error that
names `--layout` (`layout=` in the API).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LAYOUTS",
    "LayoutError",
    "Reading",
    "first_tensor",
    "logits_of",
    "read_layout",
    "token_grid",
]

# "auto" reads each layer's layout from its output and the model; the others force it
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


class LayoutError(ValueError):
    """A layer's output that cannot be read as a map in the layout given (or in any)."""


@dataclass(frozen=True)
class Reading:
    """How one layer's output becomes `acts` (N, C, h, w), and the map goes back into it."""

    layout: str  # "nchw", "nhwc" or "tokens"
    resolution: tuple[int, int]  # (h, w) of the map
    prefix: int = 0  # tokens: leading tokens that are no place in the image (class, registers)

    def to_map(self, output: Tensor) -> Tensor:
        """The layer's output -> (N, C, h, w); a view where the layout allows."""
        if self.layout == "nhwc":
            return output.permute(0, 3, 1, 2)  # (N, h, w, C) -> (N, C, h, w)
        if self.layout == "tokens":
            # (N, T, C) -> (N, C, h, w): the prefix tokens are no place in the image
            return output[:, self.prefix :].unflatten(1, self.resolution).permute(0, 3, 1, 2)
        return output

    def from_map(self, acts: Tensor, output: Tensor) -> Tensor:
        """(N', C, h, w) `acts` -> a new tensor in the layer's layout; tokens take their prefix
        from `output`'s first N' rows (the prefix is kept as it came)."""
        if self.layout == "nhwc":  # (N, C, h, w) -> (N, h, w, C)
            return acts.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format)
        if self.layout == "tokens":  # (N, C, h, w) -> (N, h*w, C), after the prefix tokens
            grid = acts.permute(0, 2, 3, 1).flatten(1, 2)
            return torch.cat([output[: acts.shape[0], : self.prefix], grid], 1)
        # a copy: in-place ops downstream (ReLU(inplace=True)) change it, not `acts`
        return acts.clone()

    def describe(self, shape: tuple[int, ...]) -> str:
        """`shape` (without the batch) and the layout it is read in, for the line that names
        the layer: `(512, 4, 4) nchw`, `(4, 4, 768) nhwc as (768, 4, 4)`, `tokens (197, 192):
        1 prefix dropped, 14x14 grid`."""
        if self.layout == "tokens":
            h, w = self.resolution
            return f"tokens {shape}: {self.prefix} prefix dropped, {h}x{w} grid"
        if self.layout == "nhwc":
            h, w, c = shape
            return f"{shape} nhwc as ({c}, {h}, {w})"
        return f"{shape} nchw"


def first_tensor(output: Any) -> Tensor | None:
    """A layer's output as a tensor: itself, or the first element of a tuple (a Hugging Face
    layer's `(hidden_states, attentions)`); None for anything else."""
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        output = output[0]
    return output if isinstance(output, Tensor) else None


def logits_of(output: Any) -> Tensor:
    """A model's (N, K) logits from what its forward returns: a tensor, a tuple or list (its
    first element), a dict or a Hugging Face `ModelOutput` (its `logits`)."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)  # ModelOutput, and objects like it
    if logits is None and isinstance(output, dict):
        logits = output.get("logits", next(iter(output.values()), None))
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"the model must return (N, K) logits (a tensor, a tuple or dict holding them, or an "
            f"output with .logits), got {type(output).__name__}"
        )
    return logits


def read_layout(
    model: nn.Module,
    module: nn.Module,
    name: str,
    output: Tensor,
    image: tuple[int, int] | None,
    layout: str = "auto",
) -> Reading:
    """How `module`'s `output` (named `name`) lies on an `image` (H, W) input (None: unknown);
    `layout` one of LAYOUTS. LayoutError (one line, naming --layout) when it cannot be read."""
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    shape = tuple(output.shape)
    if output.ndim == 3 and layout in ("auto", "tokens"):
        prefix, h, w = token_grid(model, name, shape[1], image)
        return Reading("tokens", (h, w), prefix)
    if output.ndim == 4 and layout in ("auto", "nchw", "nhwc"):
        fits = {k: _fits(_axes(shape, k), image) for k in ("nchw", "nhwc")}
        if layout == "auto":
            readable = [k for k, ok in fits.items() if ok]
            if len(readable) == 2:  # C = h = w: the layer's last weighted module says
                readable = ["nhwc" if _channels_last(module, shape[-1]) else "nchw"]
            if readable:
                layout = readable[0]
        if layout == "nchw" and (fits["nchw"] or image is None):
            return Reading("nchw", (shape[2], shape[3]))
        if layout == "nhwc" and (fits["nhwc"] or image is None):
            return Reading("nhwc", (shape[1], shape[2]))
    on = f" on a {image[0]}x{image[1]} input" if image is not None else ""
    want = "tokens" if output.ndim == 3 else "nchw or nhwc"
    if output.ndim == 4:  # the one that fits, where one does
        want = " or ".join(k for k in ("nchw", "nhwc") if _fits(_axes(shape, k), image)) or want
    raise LayoutError(
        f"layer {name!r} outputs {shape}{on}, which cannot be read as layout {layout}: pass "
        f"--layout {want} (layout= in the API), or name another layer with --layer"
    )


def token_grid(
    model: nn.Module, name: str, count: int, image: tuple[int, int] | None = None
) -> tuple[int, int, int]:
    """(prefix, h, w) of a layer's `count` tokens: the prefix tokens first, then h*w places.

    The model's own `num_prefix_tokens` and `tokens_grid` win; otherwise the grid is the
    largest that fits with the `image`'s aspect (a square without one) and the prefix what is
    left.
    """
    prefix = getattr(model, "num_prefix_tokens", None)
    grid = getattr(model, "tokens_grid", None)
    if grid is None:
        grid = _largest_grid(count - (prefix or 0), image)
    h, w = grid
    prefix = count - h * w if prefix is None else prefix
    if prefix < 0 or prefix + h * w != count or h * w < 1:
        raise LayoutError(
            f"layer {name!r} outputs {count} tokens, which are not {prefix} prefix tokens and a "
            f"{h}x{w} grid: pass --tokens-grid HxW and --prefix-tokens K that add up to {count}"
        )
    return prefix, h, w


def _largest_grid(places: int, image: tuple[int, int] | None) -> tuple[int, int]:
    """The largest h x w <= `places` with h/w the image's aspect (a square by default)."""
    side = math.isqrt(max(places, 0))
    if image is None or image[0] == image[1] or places < 1:
        return side, side
    big, small = max(image), min(image)
    for count in range(places, 0, -1):  # fewest prefix tokens first
        for short in range(1, math.isqrt(count) + 1):
            if count % short == 0 and (count // short) * small == short * big:
                long = count // short
                return (long, short) if image[0] > image[1] else (short, long)
    return side, side


def _axes(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The (h, w) of a 4-D `shape` read in `layout`."""
    return shape[1:3] if layout == "nhwc" else shape[2:]


def _fits(grid: tuple[int, ...], image: tuple[int, int] | None) -> bool:
    """Whether (h, w) lies on an (H, W) image as a layer's map does: no larger, the same aspect
    within a pixel (a stride's rounding)."""
    h, w = grid
    if image is None:
        return h == w
    big_h, big_w = image
    return 1 <= h <= big_h and 1 <= w <= big_w and abs(h * big_w - w * big_h) <= max(image)


def _channels_last(module: nn.Module, channels: int) -> bool:
    """Whether `module`'s last weighted submodule works on the last axis, of `channels`."""
    last = None
    for m in module.modules():
        if getattr(m, "weight", None) is not None:
            last = m
    if isinstance(last, nn.Linear):
        return last.out_features == channels
    # timm's LayerNorm2d subclasses nn.LayerNorm and normalises channels first
    if isinstance(last, nn.LayerNorm) and "2d" not in type(last).__name__.lower():
        return tuple(last.normalized_shape) == (channels,)
    return False
