"""Explain the mistakes: pick which to show, then every map they need, in batched passes.

The step between evaluation and the pictures: `select_mistakes` filters and orders the
misclassified images, `explain_mistakes` computes their maps (predicted class, true class and
contrast, per layer), `explain_chunks` the same a chunk at a time for a gallery that streams.
Its `Explanations` (maps at native resolution, a few hundred bytes per image) feed both the
PNG gallery and the HTML report, so this module draws nothing and imports no picture code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from camlens.cam import METHODS, PRECISIONS, create, find_layer, normalize_cams
from camlens.cam.layers import upsample
from camlens.choices import SORTS
from camlens.distributed import gather, shard_rows, world_size
from camlens.evaluate import Mistakes, as_float_images

__all__ = [
    "SORTS",
    "ExplainError",
    "Explanations",
    "check_explainable",
    "concat_explanations",
    "explain_chunks",
    "explain_each",
    "explain_mistakes",
    "gather_explanations",
    "select_mistakes",
]


class ExplainError(ValueError):
    """A method, layer, class name, sort or precision that cannot be explained as asked."""


@dataclass(frozen=True)
class Explanations:
    """Maps of the predicted class, the true class and their contrast, per layer, on the CPU.

    Kept at each layer's native resolution (a few hundred bytes per image rather than tens of
    kilobytes), so that thousands of mistakes fit in memory; `*_cams` upsample and normalise on
    demand exactly as the engine does. Predicted- and label-class maps of one image share a
    scale ("pair" normalisation), so a weak label-class map looks weak; `*_max` keep each raw
    map's maximum for comparing images.
    """

    method: str
    layers: tuple[str, ...]
    resolutions: tuple[tuple[int, int], ...]  # each layer's native map (h, w)
    size: tuple[int, int]  # (H, W) of the images: what the maps are shown at
    pred_low: tuple[Tensor, ...]  # per layer (M, h, w): raw maps of the predicted classes
    label_low: tuple[Tensor, ...]  # per layer (M, h, w): raw maps of the true classes
    contrast_low: tuple[Tensor, ...] | None  # per layer (M, h, w), signed; None: non-linear
    pred_max: Tensor  # (L, M)
    label_max: Tensor  # (L, M)
    logits: Tensor  # (M, K)

    def __len__(self) -> int:
        return self.logits.shape[0]

    def layer_maps(self, li: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Layer `li`'s (M, H, W) pred and label maps in [0, 1] and contrast in [-1, 1]."""
        # the engine's own steps (camlens.cam assemble_results), so the pixels are identical
        ups = [upsample(m[li], self.size) for m in (self.pred_low, self.label_low)]
        pred, label = normalize_cams(ups, "pair", False)
        contrast = None
        if self.contrast_low is not None:
            contrast = normalize_cams([upsample(self.contrast_low[li], self.size)], "pair", True)[0]
        return pred, label, contrast

    def _stacked(self, kind: int) -> Tensor:
        return torch.stack([self.layer_maps(li)[kind] for li in range(len(self.layers))])

    @property
    def pred_cams(self) -> Tensor:
        """(L, M, H, W) in [0, 1]: maps of the predicted classes."""
        return self._stacked(0)

    @property
    def label_cams(self) -> Tensor:
        """(L, M, H, W) in [0, 1]: maps of the true classes."""
        return self._stacked(1)

    @property
    def contrast_cams(self) -> Tensor | None:
        """(L, M, H, W) in [-1, 1]; None for non-linear methods."""
        return None if self.contrast_low is None else self._stacked(2)

    def select(self, rows: Tensor | slice) -> Explanations:
        """A subset or reordering of the images, by index tensor, mask or slice."""

        def pick(maps: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return tuple(m[rows] for m in maps)

        return replace(
            self,
            pred_low=pick(self.pred_low),
            label_low=pick(self.label_low),
            contrast_low=None if self.contrast_low is None else pick(self.contrast_low),
            pred_max=self.pred_max[:, rows],
            label_max=self.label_max[:, rows],
            logits=self.logits[rows],
        )


def concat_explanations(parts: Sequence[Explanations]) -> Explanations:
    """The chunks of one method's maps, in order, as one `Explanations`."""
    first = parts[0]

    def join(get: Callable[[Explanations], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        return tuple(torch.cat([get(p)[li] for p in parts]) for li in range(len(first.layers)))

    return replace(
        first,
        pred_low=join(lambda p: p.pred_low),
        label_low=join(lambda p: p.label_low),
        contrast_low=None if first.contrast_low is None else join(lambda p: p.contrast_low),
        pred_max=torch.cat([p.pred_max for p in parts], 1),
        label_max=torch.cat([p.label_max for p in parts], 1),
        logits=torch.cat([p.logits for p in parts]),
    )


def check_explainable(
    model: nn.Module,
    methods: Sequence[str],
    layers: Sequence[str],
    precision: str = "fp32",
) -> None:
    """Raise ExplainError, naming what is valid, unless `model` can be explained as asked.

    Cheap: callers check before hours of training rather than after.
    """
    for method in methods:
        if method not in METHODS:
            raise ExplainError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    if not layers:
        raise ExplainError("no layer to explain: name one, e.g. layer4")
    if len(set(layers)) < len(layers):
        raise ExplainError(f"a layer is named twice in {', '.join(layers)}: name each once")
    for layer in layers:
        try:
            find_layer(model, layer)
        except KeyError as e:  # its message lists the model's layer names
            raise ExplainError(e.args[0]) from None
    if precision not in PRECISIONS:
        raise ExplainError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")


def explain_mistakes(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    method: str = "gradcam",
    layers: Sequence[str] = ("layer4",),
    batch_size: int = 64,
    precision: str = "fp32",
    preds: Tensor | None = None,
) -> Explanations:
    """One forward and one partial backward per target set for each chunk of `batch_size`.

    `preds` are the classes the predicted-class maps explain; None: the model's arg-max.
    """
    check_explainable(model, [method], layers, precision)
    device = next(model.parameters()).device
    x = as_float_images(images.to(device))
    with create(
        method, model, list(layers), batch_size=batch_size, normalize="pair", precision=precision
    ) as cam:
        pair = cam.explain_pair(
            x, labels.to(device), preds=None if preds is None else preds.to(device)
        )
    contrast = pair.contrast.low_res if pair.contrast is not None else None
    return Explanations(
        method=method,
        layers=pair.pred.layers,
        resolutions=pair.pred.resolutions,
        size=(int(x.shape[-2]), int(x.shape[-1])),
        pred_low=tuple(m.cpu() for m in pair.pred.low_res),
        label_low=tuple(m.cpu() for m in pair.label.low_res),
        contrast_low=None if contrast is None else tuple(m.cpu() for m in contrast),
        pred_max=pair.pred.raw_max.cpu(),
        label_max=pair.label.raw_max.cpu(),
        logits=pair.pred.logits.cpu(),
    )


def explain_chunks(
    model: nn.Module,
    mistakes: Mistakes,
    method: str = "gradcam",
    layers: Sequence[str] = ("layer4",),
    batch_size: int = 64,
    precision: str = "fp32",
    chunk_size: int | None = None,
) -> Iterator[tuple[Mistakes, Explanations]]:
    """`explain_mistakes` of `mistakes` (with their images) chunk by chunk, in order, so that
    a caller can draw and forget each chunk. The predicted-class maps explain `mistakes.preds`.

    `chunk_size` (default `batch_size`) is rounded up to a multiple of `batch_size`: the engine
    then sees the same batches as in one call, and the maps are identical bit for bit. Under
    torchrun every rank explains its share of each chunk and every rank gets the chunk's maps.
    """
    if mistakes.images is None:
        raise ExplainError("mistakes carry no images: read them with read_mistakes(path, split)")
    # under torchrun a chunk holds a whole batch for each rank, which explains its own batch
    step = -(-(chunk_size or batch_size) // batch_size) * batch_size * world_size()
    for start in range(0, len(mistakes), step):
        chunk = mistakes.select(torch.arange(start, min(start + step, len(mistakes))))
        rows, count = shard_rows(len(chunk), batch_size)
        mine = chunk.select(rows)
        expl = explain_mistakes(
            model,
            mine.images,
            mine.labels,
            method,
            layers,
            batch_size,
            precision,
            preds=mine.preds,
        )
        yield chunk, gather_explanations(expl, count)


def select_mistakes(
    mistakes: Mistakes,
    classes: Sequence[str],
    sort: str = "confidence",
    label_name: str | None = None,
    pred_name: str | None = None,
    limit: int | None = None,
) -> Mistakes:
    """Filter by true/predicted class name, order (most confident or largest margin first), cut."""
    keep = torch.ones(len(mistakes), dtype=torch.bool)
    for name, column in ((label_name, mistakes.labels), (pred_name, mistakes.preds)):
        if name is not None:
            if name not in classes:
                raise ExplainError(f"unknown class {name!r}: choose from {', '.join(classes)}")
            keep &= column == list(classes).index(name)
    if sort not in SORTS:
        raise ExplainError(f"unknown sort {sort!r}: choose from {', '.join(SORTS)}")
    chosen = mistakes.select(keep.nonzero().flatten())
    key = {"confidence": -chosen.confidence, "margin": -chosen.margins, "index": chosen.indices}
    order = key[sort].argsort(stable=True)
    return chosen.select(order[:limit] if limit is not None else order)


def explain_each(
    model: nn.Module,
    mistakes: Mistakes,
    methods: Sequence[str],
    layers: Sequence[str] = ("layer4",),
    batch_size: int = 64,
    precision: str = "fp32",
) -> dict[str, Explanations]:
    """Each method's maps of `mistakes` (with their images); the predicted-class maps explain
    `mistakes.preds`, the stated predictions (TTA's, from a csv), not the arg-max.

    Under torchrun each rank explains its share, cut at whole batches, and every rank gets all
    the maps, in order (camlens.distributed)."""
    rows, count = shard_rows(len(mistakes), batch_size)
    mine = mistakes.select(rows)
    return {
        method: gather_explanations(
            explain_mistakes(
                model,
                mine.images,
                mine.labels,
                method,
                layers,
                batch_size,
                precision,
                preds=mine.preds,
            ),
            count,
        )
        for method in (methods if len(mistakes) else ())
    }


def gather_explanations(expl: Explanations, count: int) -> Explanations:
    """Under torchrun, every rank's first `count` explained mistakes in rank order, on every
    rank (a rank with an empty share computed one stand-in row: count 0); else `expl`."""

    def each(t: Tensor, dim: int) -> Tensor:
        return gather(t.narrow(dim, 0, count), dim)

    def lows(maps: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
        return None if maps is None else tuple(each(m, 0) for m in maps)

    if world_size() == 1:
        return expl
    return replace(
        expl,
        pred_low=lows(expl.pred_low),
        label_low=lows(expl.label_low),
        contrast_low=lows(expl.contrast_low),
        pred_max=each(expl.pred_max, 1),
        label_max=each(expl.label_max, 1),
        logits=each(expl.logits, 0),
    )
