"""The maps of a job, computed here and nowhere else: one `ExplainPlan`, checked once.

`ExplainPlan` says what a job explains and how (methods, layers, batch sizes, precision, which
mistakes); the pipeline builds it from flags or the notebook, checks it once against the model
(`ExplainPlan.check`) and hands it whole to every step. `select_mistakes` filters and orders
the misclassified images; `mistake_maps` computes their maps (predicted class, true class and
contrast, per layer), `stream_mistake_maps` the same a chunk at a time, which the gallery draws
and the report's pair statistics read; `compute_maps` turns images and targets into maps for
the steps that explain other images (correct ones, another model's, another epoch's).
With `plan.counterfactual` each streamed chunk also carries the counterfactual test of its
mistakes (`mistake_counterfactual`), computed while their images are on hand.
Its `Explanations` (maps at native resolution, a few hundred bytes per image) feed both the
PNG gallery and the HTML report, so this module draws nothing and imports no picture code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from camlens.cam import KNOBS, Engine, create, normalize_maps
from camlens.cam.layers import upsample
from camlens.cam.renamed import Renamed, old_names
from camlens.choices import SORTS
from camlens.distributed import gather, shard_rows, world_size
from camlens.evaluate import Mistakes, as_float_images
from camlens.metrics.counterfactual import Counterfactual, CounterfactualConfig, counterfactual
from camlens.plan import ExplainError, ExplainPlan, check_explainable

__all__ = [
    "SORTS",
    "ExplainError",
    "ExplainPlan",
    "Explanations",
    "check_explainable",
    "compute_maps",
    "concat_explanations",
    "engine_for",
    "gather_explanations",
    "mistake_counterfactual",
    "mistake_maps",
    "select_mistakes",
    "stream_mistake_maps",
]

__getattr__ = old_names(__name__, globals())  # camlens 0.1's names (cam/renamed.py)


@dataclass(frozen=True)
class Explanations:
    """Maps of the predicted class, the true class and their contrast, per layer, on the CPU.

    Kept at each layer's native resolution (a few hundred bytes per image rather than tens of
    kilobytes), so that thousands of mistakes fit in memory; `*_maps` upsample and normalise on
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
    # the counterfactual test of each image (`mistake_counterfactual`); None: not asked for
    counterfactual: Counterfactual | None = None

    def __len__(self) -> int:
        return self.logits.shape[0]

    def layer_maps(self, li: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Layer `li`'s (M, H, W) pred and label maps in [0, 1] and contrast in [-1, 1]."""
        # the engine's own steps (camlens.cam assemble_results), so the pixels are identical
        ups = [upsample(m[li], self.size) for m in (self.pred_low, self.label_low)]
        pred, label = normalize_maps(ups, "pair", False)
        contrast = None
        if self.contrast_low is not None:
            contrast = normalize_maps([upsample(self.contrast_low[li], self.size)], "pair", True)[0]
        return pred, label, contrast

    def _stacked(self, kind: int) -> Tensor:
        return torch.stack([self.layer_maps(li)[kind] for li in range(len(self.layers))])

    @property
    def pred_maps(self) -> Tensor:
        """(L, M, H, W) in [0, 1]: maps of the predicted classes."""
        return self._stacked(0)

    @property
    def label_maps(self) -> Tensor:
        """(L, M, H, W) in [0, 1]: maps of the true classes."""
        return self._stacked(1)

    @property
    def contrast_maps(self) -> Tensor | None:
        """(L, M, H, W) in [-1, 1]; None for non-linear methods."""
        return None if self.contrast_low is None else self._stacked(2)

    pred_cams, label_cams, contrast_cams = Renamed(), Renamed(), Renamed()  # camlens 0.1's

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
            counterfactual=_each_cf(self.counterfactual, lambda t: t[rows]),
        )


def _each_cf(cf: Counterfactual | None, fn: Callable[[Tensor], Tensor]) -> Counterfactual | None:
    """`cf` with `fn` applied to each of its per-image tensors (select, gather)."""
    if cf is None:
        return None
    return replace(cf, **{f.name: fn(getattr(cf, f.name)) for f in _cf_tensors()})


def _cf_tensors():
    return [f for f in fields(Counterfactual) if f.type in ("Tensor", Tensor)]


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
        counterfactual=None
        if first.counterfactual is None
        else _join_cf([p.counterfactual for p in parts]),
    )


def mistake_maps(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    plan: ExplainPlan,
    method: str | None = None,
    preds: Tensor | None = None,
) -> Explanations:
    """Maps of `images` (uint8 or [0, 1]) at `plan.hooked_layers`: one forward and one partial
    backward per target set for each CAM batch. `method` None: the plan's first.

    `preds` are the classes the predicted-class maps explain; None: the model's arg-max.
    The plan is trusted: `plan.check(model)` runs once per job, before.
    """
    method = method or plan.methods[0]
    device = next(model.parameters()).device
    x = as_float_images(images.to(device))
    with engine_for(method, model, plan.hooked_layers, plan, "pair") as cam:
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


def stream_mistake_maps(
    model: nn.Module,
    mistakes: Mistakes,
    plan: ExplainPlan,
    method: str | None = None,
    *,
    counterfactual: bool | None = None,
    counterfactual_config: CounterfactualConfig | None = None,
) -> Iterator[tuple[Mistakes, Explanations]]:
    """`mistake_maps` of `mistakes` (with their images) chunk by chunk, in order, so that a
    caller can draw and forget each chunk. The predicted-class maps explain `mistakes.preds`.
    `counterfactual` (None: `plan.counterfactual_on` the images' side): each chunk's
    `Explanations` also carry `mistake_counterfactual` of its images (its settings:
    `counterfactual_config`), computed while the images are on hand.

    A chunk is `plan.chunk_size` rounded up to whole CAM batches: the engine then sees the same
    batches as in one call, and the maps are identical bit for bit. Under torchrun every rank
    explains its share of each chunk and every rank gets the chunk's maps.
    """
    if mistakes.images is None:
        raise ExplainError("mistakes carry no images: read them with read_mistakes(path, split)")
    batch = plan.cam_batch_size
    # under torchrun a chunk holds a whole batch for each rank, which explains its own batch
    step = -(-(plan.chunk_size or batch) // batch) * batch * world_size()
    for start in range(0, len(mistakes), step):
        chunk = mistakes.select(torch.arange(start, min(start + step, len(mistakes)), device="cpu"))
        rows, count = shard_rows(len(chunk), batch)
        mine = chunk.select(rows)
        expl = mistake_maps(model, mine.images, mine.labels, plan, method, mine.preds)
        side = mine.images.shape[-1]
        if plan.counterfactual_on(side) if counterfactual is None else counterfactual:
            # each rank tests its own rows; per-image seeds keep the results those of one
            # process, and the gather below carries them with the maps
            cf = mistake_counterfactual(model, mine, expl, plan, counterfactual_config)
            expl = replace(expl, counterfactual=cf)
        yield chunk, gather_explanations(expl, count)


def mistake_counterfactual(
    model: nn.Module,
    mistakes: Mistakes,
    expl: Explanations,
    plan: ExplainPlan,
    config: CounterfactualConfig | None = None,
) -> Counterfactual:
    """The counterfactual test (`camlens.metrics.counterfactual`) of `mistakes` (with their
    images) on `expl`'s deepest layer, on the CPU. `config`: its fractions, headline and
    imputation (None: `CounterfactualConfig()`'s); its resolution, seed and region are set here.

    The removed region is the top of the contrast map ("why pred rather than true"); a
    non-linear method has none, and its predicted-class map stands in (`region`
    "predicted-class", which the verdicts and index.csv's `cf_region` say). The random maps are
    drawn at that layer's resolution; each image's random map and noise come from
    `plan.metric_seed` and its test index, so a result is the same in any chunk, on any
    number of ranks, on a resumed run.

    The test runs a CAM batch (`plan.cam_batch_size` rows from the first) at a time, as the
    maps do: the stream's chunks and ranks' shares start at whole batches, so an image is
    imputed and scored in the same batch however the work is cut. That makes a resumed or
    chunked result the same bit for bit (oneDNN's kernels and the batched solve's stopping
    step depend on the batch), not only to fp32 rounding.
    """
    device = next(model.parameters()).device
    last = len(expl.layers) - 1
    pred, _, contrast = expl.layer_maps(last)  # (M, H, W) each
    maps, region = (contrast, "contrast") if contrast is not None else (pred, "predicted-class")
    # `config` gives the fractions, headline and imputation; these three are the job's own
    config = replace(
        config or CounterfactualConfig(),
        resolution=expl.resolutions[last],
        seed=plan.metric_seed,
        region=region,
    )
    seeds = plan.metric_seed * 1_000_003 + mistakes.indices.long()
    parts = []
    for start in range(0, max(len(mistakes), 1), plan.cam_batch_size):
        rows = slice(start, start + plan.cam_batch_size)
        cf = counterfactual(
            model,
            as_float_images(mistakes.images[rows].to(device)),
            maps[rows].to(device),
            mistakes.preds[rows],
            mistakes.labels[rows],
            config,
            seeds=seeds[rows],
        )
        parts.append(_each_cf(cf, lambda t: t.cpu()))
    return _join_cf(parts)


def _join_cf(parts: Sequence[Counterfactual]) -> Counterfactual:
    """Counterfactual tests of consecutive rows, as one."""
    if len(parts) == 1:
        return parts[0]
    fields_of = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in _cf_tensors()}
    return replace(parts[0], **fields_of)


def compute_maps(
    model: nn.Module,
    images: Tensor,
    target_sets: Sequence[Tensor],
    plan: ExplainPlan,
    method: str | None = None,
    layers: Sequence[str] | None = None,
    normalize: str = "minmax",
) -> list[Tensor]:
    """Per target set (N,), the (L, N, H, W) maps of `images` (uint8 or [0, 1]) at each layer,
    on the CPU, from one engine pass (one forward, a partial backward per set).

    `method` None: the plan's first; `layers` None: the plan's. `normalize` as in CamConfig
    ("none": the raw rectified maps). The plan is trusted, as in `mistake_maps`.
    """
    layers = list(layers or plan.hooked_layers)
    if images.shape[0] == 0:
        return [torch.zeros(len(layers), 0, *images.shape[-2:]) for _ in target_sets]
    device = next(model.parameters()).device
    x = as_float_images(images.to(device))
    with engine_for(method or plan.methods[0], model, layers, plan, normalize) as cam:
        results = cam.explain_many(x, [t.to(device) for t in target_sets])
    return [r.layer_maps.cpu() for r in results]


def engine_for(
    method: str,
    model: nn.Module,
    layers: Sequence[str],
    plan: ExplainPlan,
    normalize: str = "minmax",
    seed: int | None = None,
) -> Engine:
    """The plan's engine for `method` at `layers`: the one place a job's engines are built
    (the gallery's, the report's, compare's, diff's, the epochs' and the watch's); close it,
    or use it in a `with`. Each method gets its own knobs (`ExplainPlan.knobs`). `seed`:
    another draw of a stochastic method's noise (SmoothGrad's, SS-CAM's), e.g. for its floor.
    """
    config = plan.engine_config(method, normalize)
    knobs = config.knobs or (KNOBS[method]() if method in KNOBS else None)
    if seed is not None and knobs is not None and hasattr(knobs, "seed"):
        config = replace(config, knobs=replace(knobs, seed=seed))
    return create(method, model, list(layers), config)


def select_mistakes(
    mistakes: Mistakes,
    classes: Sequence[str],
    sort: str = "confidence",
    label_name: str | None = None,
    pred_name: str | None = None,
    limit: int | None = None,
) -> Mistakes:
    """Filter by true/predicted class name, order (most confident or largest margin first), cut."""
    keep = torch.ones(len(mistakes), dtype=torch.bool, device=mistakes.labels.device)
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
        counterfactual=_each_cf(expl.counterfactual, lambda t: each(t, 0)),
    )
