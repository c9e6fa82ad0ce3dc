"""The grid localisation test: does the map of a class fall where that class is? A known answer.

The grid pointing game (Böhle et al., "B-cos Networks", CVPR 2022; Rao et al., "Towards Better
Understanding Attribution Methods", CVPR 2022): n x n confident, correctly classified test
images of n^2 distinct classes are tiled into one input, and the map of the class in tile t
should put its mass in tile t. Deletion, insertion and ROAD cannot tell a map that finds the
object from one that points at the middle (CIFAR objects sit there); here the centre blob,
and any map that ignores the class, scores exactly 1/n^2:

    share_t    = sum_{x in tile t} max(M_t(x), 0) / sum_x max(M_t(x), 0)     (Rao et al., eq. 4)
    pointing_t = |argmax M_t inside tile t| / |argmax M_t|                    (ties share the hit)

A grid's value is the mean over its n^2 tiles. The tiles partition the map, so the shares of
one class-blind map over the n^2 tiles sum to 1 and average exactly 1/n^2 (and per tile too
when the map is symmetric about the grid centre, as the centre blob is). A map with no
positive mass reads as flat: share and pointing 1/n^2, chance, rather than left out, so that
a method earns nothing by going silent on a hard grid. Tiles are exact at any resolution: a
pixel cut by a tile edge (a 3x3 map split 2x2) counts in each tile by the area it has there.

The input: a globally pooled model (the CIFAR ResNet) takes the n·H x n·W grid itself
("pooled"); one that takes only its H x W input gets the grid resized to H x W, each tile
then H/n ("resized", antialiased bilinear). Which was used is `Grids.path`. Leakage control
(after Rao et al.'s DiFull): a grid is kept only when the model's top-n^2 logits on it are its
n^2 classes; a grid where another class scores higher is dropped and counted (`dropped`), as
a map there may rightly point at what the model saw instead.

    grids = make_grids(model, images, labels, logits, GridConfig())     # or GridError
    native, inputs = grid_maps(engine, grids)          # (G, n^2, h, w), (G, n^2, nH, nW)
    values = grid_scores(native, inputs, grids.n)      # metric -> (G,) per-grid means
    native, inputs = grid_baseline_maps("centre", grids, native.shape[-2:])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camlens.cam import eval_mode, logits_of, normalize_maps
from camlens.cam.layers import upsample
from camlens.cam.precision import full_fp32
from camlens.metrics.baselines import baseline_maps
from camlens.metrics.core import make_generator
from camlens.plan import GridConfig

__all__ = [
    "GRID_BASELINES",
    "GRID_METRICS",
    "GRID_TOO_FEW",
    "GridConfig",
    "GridError",
    "Grids",
    "grid_baseline_maps",
    "grid_maps",
    "grid_scores",
    "make_grids",
    "tile_masks",
    "tile_scores",
]

# the start of every message of a test that could not run
GRID_TOO_FEW = "too few images for the grid test"
# per grid, the mean over its tiles: share at the layer's native grid and at the input's size
# (the min-max normalised, upsampled map a user sees), pointing at the native grid
GRID_METRICS = ("share", "share_input", "pointing")
# the references: the centre blob and a smooth random map at the layer's resolution (both 1/n^2 by
# construction), and the tile mask itself (share 1 wherever tiles fall on whole pixels)
GRID_BASELINES = ("centre", "random", "oracle")


class GridError(ValueError):
    """Too few confident, correct images of distinct classes for the grid test (`GRID_TOO_FEW`)."""


@dataclass(frozen=True)
class Grids:
    """The grids kept by the leakage control, with how they were built."""

    images: Tensor  # (G, C, nH, nW) "pooled" or (G, C, H, W) "resized", in [0, 1]
    targets: Tensor  # (G, n^2) the class of each tile, row-major: tile t at (t // n, t % n)
    indices: Tensor  # (G, n^2) each tile's index into the test images
    logits: Tensor  # (G, K) the model's output on each kept grid
    n: int  # tiles per side
    path: str  # "pooled": the model took the n·H x n·W grid; "resized": the grid at H x W
    built: int  # grids built, before the leakage control
    dropped: int  # grids whose top-n^2 logits were not their n^2 classes (left out)
    confident: int  # confident, correct test images the grids were drawn from


def tile_masks(size: tuple[int, int], n: int) -> Tensor:
    """(n^2, h, w) float64: each pixel's area inside each tile of an n x n split of (h, w).

    The masks sum to 1 at every pixel; a pixel cut by a tile edge is shared by area, so the
    split is exact when n does not divide h or w.
    """

    def overlap(length: int) -> Tensor:  # (n, length): tile k's share of each pixel's extent
        edges = torch.arange(n + 1, dtype=torch.float64, device="cpu") * length / n
        lo = torch.arange(length, dtype=torch.float64, device="cpu")[None]
        inside = torch.minimum(lo + 1, edges[1:, None]) - torch.maximum(lo, edges[:-1, None])
        return inside.clamp_min(0)

    rows, cols = overlap(size[0]), overlap(size[1])
    return (rows[:, None, :, None] * cols[None, :, None, :]).reshape(n * n, *size)  # (n^2, h, w)


def tile_scores(maps: Tensor, n: int) -> dict[str, Tensor]:
    """(G, n^2, h, w) maps, map t of each grid explaining the class of tile t -> (G, n^2)
    "share" of positive mass in its tile and "pointing" (its maximum in its tile; tied maxima
    share the hit by area). A map with no positive mass scores 1/n^2 on both, chance."""
    if maps.ndim != 4 or maps.shape[1] != n * n:
        raise ValueError(f"maps must be (grids, {n * n}, h, w), got {tuple(maps.shape)}")
    masks = tile_masks(tuple(maps.shape[-2:]), n).to(maps.device)  # (n^2, h, w): mask t, map t
    pos = maps.detach().double().clamp_min(0)
    total = pos.sum((-2, -1))  # (G, n^2)
    inside = (pos * masks).sum((-2, -1))
    share = torch.where(total > 0, inside / total.clamp_min(1e-300), 1.0 / (n * n))
    # every pixel ties on a map with no positive mass: pointing is then the tile's area, 1/n^2
    peak = pos.amax((-2, -1), keepdim=True)
    top = (pos >= peak * (1 - 1e-6)).double()  # (G, n^2, h, w): the arg-max set
    pointing = (top * masks).sum((-2, -1)) / top.sum((-2, -1))
    return {"share": share, "pointing": pointing}


def grid_scores(native: Tensor, inputs: Tensor, n: int) -> dict[str, Tensor]:
    """Per grid, the mean over its tiles of each of GRID_METRICS: metric -> (G,) float64.

    `native` (G, n^2, h, w): the maps at the layer's resolution; `inputs` (G, n^2, H, W) at the
    input's size. Pointing reads the native maps, where a CAM's arg-max is decided.
    """
    at_native, at_input = tile_scores(native, n), tile_scores(inputs, n)
    means = {
        "share": at_native["share"].mean(1),  # (G, n^2) -> (G,)
        "share_input": at_input["share"].mean(1),
        "pointing": at_native["pointing"].mean(1),
    }
    # a class-blind map's exact 1/n^2 carries float64 rounding (1e-17): rounded off, so that
    # the paired test sees the centre blob and Eigen-CAM tie, not a "difference" of noise
    chance = 1 / n**2
    return {k: chance + (v - chance).round(decimals=12) for k, v in means.items()}


def grid_maps(engine: Callable[[Tensor, Tensor], Tensor], grids: Grids) -> tuple[Tensor, Tensor]:
    """The maps of every tile's class on every grid: ((G, n^2, h, w) at the layer's native
    grid, (G, n^2, H, W) at the input's size), on the CPU.

    A camlens engine gives all n^2 target sets from one forward (`explain_many`); with one
    layer its native maps are its `low_res`, with several (layer3+layer4) its one combined map
    at the input's size stands for both. Any other `(images, targets) -> (N, H, W)` engine is
    called once per tile and its maps are both.
    """
    sets = [grids.targets[:, t] for t in range(grids.targets.shape[1])]
    many = getattr(engine, "explain_many", None)
    if many is None:
        inputs = torch.stack([engine(grids.images, s.to(grids.images.device)) for s in sets], 1)
        inputs = inputs.detach().float().cpu()  # n^2 x (G, H, W) -> (G, n^2, H, W)
        return inputs, inputs
    results = many(grids.images, [s.to(grids.images.device) for s in sets])
    inputs = torch.stack([r.maps for r in results], 1).cpu()  # n^2 x (G, H, W) -> (G, n^2, H, W)
    if len(results[0].low_res) != 1:
        return inputs, inputs
    return torch.stack([r.low_res[0] for r in results], 1).cpu(), inputs  # (G, n^2, h, w)


def grid_baseline_maps(
    kind: str,
    grids: Grids,
    size: tuple[int, int] | torch.Size,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A GRID_BASELINES map for every tile of every grid, as `grid_maps` returns them, with
    `size` the layer's native (h, w).

    "centre" and "random" are `baseline_maps`'s (the random one drawn afresh for every tile at
    the layer's resolution, then upsampled and min-max normalised as an engine does); "oracle"
    is the tile mask itself.
    """
    g_count, t = grids.targets.shape
    big = tuple(grids.images.shape[-2:])
    size = (int(size[0]), int(size[1]))
    if kind == "oracle":
        return (
            tile_masks(size, grids.n).float().expand(g_count, t, *size),
            tile_masks(big, grids.n).float().expand(g_count, t, *big),
        )
    if kind == "centre":
        native = baseline_maps((g_count * t, *size), "centre")
        inputs = baseline_maps((g_count * t, *big), "centre")
    elif kind == "random":
        g = make_generator(generator, 0)
        native = baseline_maps((g_count * t, *size), "random", g, resolution=size)  # (G n^2, h, w)
        # (G n^2, h, w) -> (G n^2, H, W): the engine's own upsample and normalisation
        inputs = normalize_maps([upsample(native, big)], "minmax", signed=False)[0]
    else:
        raise ValueError(
            f"unknown grid baseline {kind!r}: choose one of {', '.join(GRID_BASELINES)}"
        )
    return native.reshape(g_count, t, *size).cpu(), inputs.reshape(g_count, t, *big).cpu()


@full_fp32()  # TF32 off, restored after (camlens.cam.precision)
def make_grids(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    logits: Tensor,
    config: GridConfig | None = None,
    batch_size: int = 64,
) -> Grids:
    """Tile confident (softmax > `config.confidence`), correct `images` (N, C, H, W) (uint8 or
    [0, 1]) of distinct classes into at most `config.count` n x n grids; keep those whose
    top-n^2 logits are their n^2 classes. `logits` (N, K): the model's on `images`.

    Each image goes into one grid at most; each grid takes one image of each of the n^2
    classes with the most images left (ties in a seeded order) and places them at seeded
    tiles, so a class is not tied to a position. GridError (`GRID_TOO_FEW`) when fewer than n^2
    classes have such images, or fewer than `config.min_grids` grids are left.
    """
    config = config or GridConfig()
    n, t = config.n, config.n**2
    labels = labels.cpu()
    conf, preds = logits.detach().float().softmax(1).max(1)  # (N, K) -> (N,) each
    sure = ((preds.cpu() == labels) & (conf.cpu() > config.confidence)).nonzero().flatten()
    g = torch.Generator().manual_seed(config.seed)
    pools = {
        c: sure[labels[sure] == c][
            torch.randperm(int((labels[sure] == c).sum()), generator=g, device="cpu")
        ].tolist()
        for c in labels[sure].unique().tolist()
    }
    said = f"softmax > {config.confidence:g}"
    if len(pools) < t:
        raise GridError(
            f"{GRID_TOO_FEW}: {len(pools)} classes have confident ({said}), correct test images; "
            f"a {n}x{n} grid needs {t} distinct classes"
        )
    chosen: list[list[int]] = []
    while len(chosen) < config.count:
        ready = [c for c, left in pools.items() if left]
        if len(ready) < t:
            break
        # the classes with the most images left first: the most grids from the images there are
        ready = [ready[i] for i in torch.randperm(len(ready), generator=g, device="cpu").tolist()]
        ready = sorted(ready, key=lambda c: -len(pools[c]))[:t]
        chosen.append(
            [pools[ready[i]].pop() for i in torch.randperm(t, generator=g, device="cpu").tolist()]
        )
    if len(chosen) < config.min_grids:
        raise GridError(
            f"{GRID_TOO_FEW}: {len(chosen)} grids of {t} distinct classes from {sure.numel()} "
            f"confident ({said}), correct images; at least {config.min_grids} needed"
        )
    device = next(model.parameters()).device
    indices = torch.tensor(chosen, dtype=torch.long, device="cpu")  # (G, n^2)
    tiles = images[indices.flatten()].to(device)
    tiles = tiles.float() if tiles.is_floating_point() else tiles.float() / 255
    c, h, w = tiles.shape[1:]
    grid = tiles.reshape(len(chosen), n, n, c, h, w).permute(0, 3, 1, 4, 2, 5)
    grid = grid.reshape(len(chosen), c, n * h, n * w)  # (G n^2, C, H, W) -> (G, C, nH, nW)
    path = "pooled" if _takes(model, grid[:1], logits.shape[1]) else "resized"
    if path == "resized":  # each tile becomes H/n x W/n; a cut pixel is shared by area
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", antialias=True).clamp(0, 1)
    with torch.no_grad(), eval_mode(model):
        grid_logits = torch.cat(
            [logits_of(model(grid[i : i + batch_size])) for i in range(0, len(grid), batch_size)]
        )
    grid_logits = grid_logits.detach().float().cpu()
    # leakage control: the n^2 highest logits are exactly the grid's n^2 classes
    top = grid_logits.topk(t, 1).indices.sort(1).values  # (G, n^2)
    keep = (top == labels[indices].sort(1).values).all(1)
    kept = int(keep.sum())
    if kept < config.min_grids:
        raise GridError(
            f"{GRID_TOO_FEW}: {kept} of {len(chosen)} grids have their {t} classes as the model's "
            f"top {t}; at least {config.min_grids} needed"
        )
    return Grids(
        images=grid[keep.to(device)],
        targets=labels[indices][keep],
        indices=indices[keep],
        logits=grid_logits[keep],
        n=n,
        path=path,
        built=len(chosen),
        dropped=len(chosen) - kept,
        confident=sure.numel(),
    )


def _takes(model: nn.Module, grid: Tensor, classes: int) -> bool:
    """Whether `model` takes a grid of n·H x n·W and answers with one logit per class: a
    globally pooled network does; one with a fixed-size flatten raises or answers otherwise,
    and a fixed-size model (torchvision's ViT, timm's PatchEmbed and Swin) asserts its input
    size (AssertionError)."""
    try:
        with torch.no_grad(), eval_mode(model):
            out = logits_of(model(grid))
    except (RuntimeError, ValueError, TypeError, AssertionError):
        return False
    return tuple(out.shape) == (grid.shape[0], classes)
