"""Everything the report shows, computed in batches and kept as tensors: `ReportData`.

Per confusion pair (true t, predicted p) the report sets three mean maps side by side: the maps
of the predicted class and of the true class over the pair's images, and the map of class t over
correctly classified images of class t. Means are of *per-image sum-normalised* maps (each
non-negative map divided by its total, so that it is a distribution of mass over pixels and
every image weighs the same), computed on the map upsampled to the image size. The "outside
share" of a map is its mass outside the centre box (the middle `centre` fraction of each side,
e.g. 16x16 of 32x32) over its total mass; for a mean of sum-normalised maps it equals the mean of
the per-image shares. A uniform map's share is the area outside the box (0.75 in that example),
so a pair well above its class's correct images points at a background shortcut.

Every map comes from the explain step (`camlens.explain`): the mistakes shown arrive with
their maps (the gallery's, computed once); the pair statistics read those, stream the maps of
the pairs' other images through `stream_mistake_maps` and get the correct images' maps from
`compute_maps`. No engine is created here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from camlens.cam.layers import upsample
from camlens.data import Split
from camlens.evaluate import Evaluation, Mistakes
from camlens.explain import ExplainPlan, Explanations, compute_maps, stream_mistake_maps
from camlens.metrics.counterfactual import CounterfactualConfig
from camlens.outputs import GalleryConfig

__all__ = [
    "PairMaps",
    "ReportConfig",
    "ReportData",
    "RunFacts",
    "centre_box",
    "compute_report",
    "mean_maps",
    "outside_centre_share",
]


@dataclass(frozen=True)
class ReportConfig:
    """What the report job computes and how it draws it: the page, and (`gallery`,
    `counterfactual_config`) the gallery and the counterfactual test it shows."""

    min_pair: int = 3  # a confusion pair gets mean maps from this many images up
    max_pairs: int = 12  # the most frequent pairs only: each true class costs a pass
    # correctly classified images per true class behind the reference mean map: the first ones
    # by index, enough for a stable mean without a pass over the whole class
    correct_per_class: int = 256
    # a pair's mean maps are over at most this many of its mistakes, the most confident: their
    # cost stays bounded however many mistakes a pair holds (the page says so)
    pair_images: int = 256
    # beyond CELL_NUMBERS_UP_TO (30) classes, the page lists this many most confused pairs
    top_pairs: int = 50
    centre: float = 0.5  # side of the centre box as a fraction of the image side (16 of 32 px)
    size: int = 64  # pixels of an encoded overlay (shown at 96 px): 2 per pixel of a 32 px image
    # originals larger than this (longer side, px) are embedded as JPEG thumbnails of this size
    # (a 224 px photo as PNG is ~100 KB a card); smaller ones stay lossless PNG at native size
    thumbnail: int = 96
    # overlays: "jpeg" (any browser, a third of PNG), "png" (lossless) or "webp" (half of jpeg)
    image_format: str = "jpeg"
    quality: int = 85  # jpeg/webp quality
    alpha: float = 0.5  # weight of the heat map over the image
    colormap: str = "jet"  # unsigned maps; contrast maps always use a diverging map
    workers: int | None = None  # image-encoding threads (PIL frees the GIL); None: all cores
    gallery: GalleryConfig | None = None  # the job's gallery (explain_model); None: defaults
    # the counterfactual test's fractions, headline and imputation; whether it runs is the
    # plan's (`counterfactual`), and its resolution, seed and region are the explained
    # layer's, `plan.metric_seed` and the method's (mistake_counterfactual). None: defaults
    counterfactual_config: CounterfactualConfig | None = None

    def __post_init__(self) -> None:
        if self.image_format not in ("jpeg", "png", "webp"):
            raise ValueError(f"image_format must be jpeg, png or webp, not {self.image_format!r}")
        if not 0 < self.centre < 1:
            raise ValueError(f"centre must be in (0, 1), got {self.centre}")


@dataclass(frozen=True)
class PairMaps:
    """Mean maps and outside-centre shares of one confusion pair, per method."""

    label_index: int  # the true class
    pred_index: int  # the predicted class
    count: int  # misclassified images of the pair (all of them, not only those shown)
    used: int  # of them, those behind the mean maps: at most `ReportConfig.pair_images`
    correct: int  # correctly classified images of the true class behind the reference map
    # method -> (L, 3, H, W): pair predicted-class, pair label-class, correct label-class mean
    # maps; the three of a layer on one scale (the largest of them reaches 1)
    means: dict[str, Tensor]
    outside: dict[str, Tensor]  # method -> (L, 3) outside-centre share of the same three maps


@dataclass(frozen=True)
class ReportData:
    """Everything `render_report` draws; tensors on the CPU."""

    classes: tuple[str, ...]
    run_info: dict  # free-form facts about the run, shown as given
    history: list[dict] | None  # per-epoch metrics for the curves
    evaluation: Evaluation
    mistakes: Mistakes  # the misclassified images shown, with `images`
    explanations: dict[str, Explanations]  # method -> maps of `mistakes`
    pairs: list[PairMaps]  # most frequent first
    layers: tuple[str, ...]  # the hooked layers, shallow to deep
    model_info: dict  # architecture facts read off the model
    config: ReportConfig
    seconds: float  # time spent computing
    # the cap on the mistakes explained that chose `mistakes` (the plan's), stated on the page;
    # None: no cap
    cap: int | None = None
    # compare.json of `camlens.compare` (table, sanity curves, verdicts), None: no such section
    trust: dict | None = None
    # over-epochs.json of `camlens.epochs` plus "png": its figure, base64; None: no section
    over_epochs: dict | None = None


def centre_box(height: int, width: int, centre: float = 0.5) -> tuple[slice, slice]:
    """Rows and columns of the middle box whose sides are `centre` of the image's."""
    top = round(height * (1 - centre) / 2)
    left = round(width * (1 - centre) / 2)
    return slice(top, height - top), slice(left, width - left)


def outside_centre_share(maps: Tensor, centre: float = 0.5) -> Tensor:
    """(N, H, W) -> (N,) mass of the non-negative map outside the centre box over its total.

    NaN for a map with no mass. Scale-free: the same for a map and any positive multiple.
    """
    mass = maps.float().clamp_min(0)
    rows, cols = centre_box(*mass.shape[-2:], centre)
    total = mass.sum((1, 2))
    inside = mass[:, rows, cols].sum((1, 2))
    return torch.where(total > 0, (total - inside) / total.clamp_min(1e-30), float("nan"))


def _mass_sum(maps: Tensor) -> tuple[Tensor, int]:
    """(n, H, W) -> the (H, W) sum of the sum-normalised maps with mass, and how many had mass.

    Sums of chunks add up: `mean_maps` of many images needs only one (H, W) sum per group.
    """
    mass = maps.float().clamp_min(0)
    total = mass.sum((1, 2))  # (n, H, W) -> (n,)
    keep = total > 0
    return (mass[keep] / total[keep, None, None]).sum(0), int(keep.sum())


def _scaled_means(sums: Sequence[Tensor], counts: Sequence[int]) -> Tensor:
    """G (H, W) sums of `_mass_sum` and their counts -> (G, H, W) means on one shared scale."""
    stack = torch.stack(
        [s / c if c else torch.zeros_like(s) for s, c in zip(sums, counts, strict=True)]
    )
    top = stack.max()
    return stack / top if top > 0 else stack


def mean_maps(groups: Sequence[Tensor]) -> Tensor:
    """G groups of (n, H, W) maps -> (G, H, W) means of sum-normalised maps, on one scale.

    Each map's non-negative part is divided by its total (maps with no mass are left out), the
    group is averaged, and all G means are divided by the largest value among them: a diffuse
    mean looks faint beside a concentrated one. A group with no usable map gives zeros.
    """
    sums, counts = zip(*(_mass_sum(maps) for maps in groups), strict=True)
    return _scaled_means(sums, counts)


def pair_codes(mistakes: Mistakes, k: int) -> Tensor:
    """(M,) each mistake's pair as one number, label * K + pred: pairs by bincount, not masks."""
    return mistakes.labels.long() * k + mistakes.preds.long()


def _top_pairs(confusion: Tensor, mistakes: Mistakes, config: ReportConfig) -> list[tuple]:
    """The `max_pairs` most frequent (true, predicted) pairs with `min_pair` mistakes or more,
    most frequent first (ties: by true, then predicted class): one bincount over the mistakes."""
    k = confusion.shape[0]
    counts = pair_codes(mistakes, k).bincount(minlength=k * k)  # (M,) -> (K*K,)
    frequent = (counts >= config.min_pair).nonzero().flatten()  # ascending codes
    order = counts[frequent].argsort(descending=True, stable=True)[: config.max_pairs]
    return [
        (c // k, c % k, n)
        for c, n in zip(
            *(t.tolist() for t in (frequent[order], counts[frequent[order]])), strict=True
        )
    ]


def _slots(pairs: list[tuple], k: int) -> Tensor:
    """(K*K,) each pair code's place in `pairs`, -1 for the pairs not chosen."""
    slot = torch.full((k * k,), -1, dtype=torch.long)
    codes = torch.tensor([t * k + p for t, p, _ in pairs], dtype=torch.long)
    slot[codes] = torch.arange(len(pairs))
    return slot


def _pair_rows(m: Mistakes, pairs: list[tuple], k: int, cap: int) -> tuple[Tensor, Tensor]:
    """(M,) each mistake's pair (its place in `pairs`, -1: none or beyond the pair's first
    `cap`), and (P,) how many each pair keeps. `m` is most confident first."""
    which = _slots(pairs, k)[pair_codes(m, k)]  # (M,)
    kept = torch.zeros(len(pairs), dtype=torch.long)
    for j in range(len(pairs)):  # P <= max_pairs passes over M
        rows = (which == j).nonzero().flatten()
        which[rows[cap:]] = -1
        kept[j] = min(len(rows), cap)
    return which, kept


def _pair_maps(
    model: nn.Module,
    split: Split,
    evaluation: Evaluation,
    plan: ExplainPlan,
    method: str,
    pairs: list[tuple],
    config: ReportConfig,
    shown: tuple[Mistakes, Explanations | None],
) -> tuple[dict, dict, dict]:
    """Mean maps of each pair's images and of correct images of each pair's true class.

    Only sums of maps stay, chunk by chunk, however many mistakes the pairs hold: the shown
    mistakes' maps are read from `shown`, the pairs' other images are streamed."""
    m, size = evaluation.mistakes, tuple(split.images.shape[-2:])
    k = evaluation.confusion.shape[0]
    which, kept = _pair_rows(m, pairs, k, config.pair_images)
    used = m.indices[which >= 0]  # the split's images behind the pairs' means
    slot = _slots(pairs, k)
    sums: dict = {}  # (pair, layer, kind) -> [(H, W) sum of sum-normalised maps, count]

    def add(chunk: Mistakes, expl: Explanations, keep: Tensor) -> None:
        at = torch.where(keep, slot[pair_codes(chunk, k)], -1)  # (n,) each row's pair or -1
        present = [(j, (at == j).nonzero().flatten()) for j in at[at >= 0].unique().tolist()]
        for li in range(len(plan.hooked_layers)):
            for kind, low in enumerate((expl.pred_low[li], expl.label_low[li])):
                maps = upsample(low, size)  # (n, h, w) -> (n, H, W), raw: the scale is moot
                for j, rows in present:
                    t, p, _ = pairs[j]
                    total, n = _mass_sum(maps[rows])
                    acc = sums.setdefault(((t, p), li, kind), [0.0, 0])
                    acc[0], acc[1] = acc[0] + total, acc[1] + n

    in_pairs = which >= 0
    mistakes, expl = shown
    step = plan.cam_batch_size * 4
    if expl is not None:  # the maps the gallery drew, a chunk at a time (upsampling costs)
        for c0 in range(0, len(mistakes), step):
            chunk = mistakes.select(slice(c0, c0 + step))
            keep = torch.isin(chunk.indices, used)
            add(chunk, expl.select(slice(c0, c0 + step)), keep)
        in_pairs &= ~torch.isin(m.indices, mistakes.indices)
    rest_rows = in_pairs.nonzero().flatten()
    # the images read a slice of whole CAM batches at a time: read at once, the pairs' up to
    # max_pairs x pair_images photos were 460 MB at 224 px. The maps' batches are the same
    for c0 in range(0, len(rest_rows), step):
        rest = m.select(rest_rows[c0 : c0 + step])
        rest = replace(rest, images=split.images[rest.indices])
        for chunk, chunk_expl in stream_mistake_maps(
            model, rest, plan, method, counterfactual=False
        ):
            every = torch.ones(len(chunk), dtype=torch.bool, device=chunk.indices.device)
            add(chunk, chunk_expl, every)
    # correct images of every true class involved, a class per call: only sums stay
    preds, labels = evaluation.logits.argmax(1).cpu(), split.labels
    correct, refs = {}, {}
    for t in sorted({t for t, _, _ in pairs}):
        idx = ((labels == t) & (preds == t)).nonzero().flatten()[: config.correct_per_class]
        correct[t] = len(idx)
        if len(idx):
            (ref,) = compute_maps(
                model, split.images[idx], [labels[idx]], plan, method, normalize="none"
            )  # (L, n, H, W)
            refs[t] = [_mass_sum(ref[li]) for li in range(len(plan.hooked_layers))]
    means, outside = {}, {}
    for t, p, _ in pairs:
        per_layer = []
        for li in range(len(plan.hooked_layers)):
            ref_sum = refs[t][li] if t in refs else (torch.zeros(size), 0)
            got = [sums.get(((t, p), li, kind), [torch.zeros(size), 0]) for kind in (0, 1)]
            got.append(ref_sum)  # pair pred, pair label, correct label: one scale
            per_layer.append(_scaled_means([g[0] for g in got], [g[1] for g in got]))
        means[(t, p)] = torch.stack(per_layer)  # L x (3, H, W) -> (L, 3, H, W)
        outside[(t, p)] = outside_centre_share(means[(t, p)].flatten(0, 1), config.centre).view(
            -1, 3
        )  # (L*3, H, W) -> (L, 3)
    return (
        means,
        outside,
        correct,
        dict(zip([(t, p) for t, p, _ in pairs], kept.tolist(), strict=True)),
    )


def model_facts(model: nn.Module) -> dict:
    """What the report says about the architecture, read off the model itself."""
    facts = {"model": str(getattr(model, "arch", type(model).__name__))}
    for name in ("norm", "width", "num_classes"):
        if hasattr(model, name):
            facts[name] = getattr(model, name)
    facts["parameters"] = sum(p.numel() for p in model.parameters())
    return facts


@dataclass(frozen=True)
class RunFacts:
    """What the page says beyond what `compute_report` measures: given by the caller."""

    run_info: dict = field(default_factory=dict)  # facts the summary shows as given
    history: list[dict] | None = None  # the training's metrics.jsonl rows: the curves
    trust: dict | None = None  # compare.json, for "Can these maps be trusted?"
    # over-epochs.json of `camlens.epochs` with "png" (its figure, base64), for "Maps across
    # training"
    over_epochs: dict | None = None


def compute_report(
    model: nn.Module,
    split: Split,
    classes: Sequence[str],
    plan: ExplainPlan,
    *,
    explained: tuple[Mistakes, dict[str, Explanations]],
    evaluation: Evaluation,
    facts: RunFacts | None = None,
    config: ReportConfig | None = None,
) -> ReportData:
    """Everything the report shows of `evaluation` (of `model` on `split`), with the mistakes
    shown and their maps per method (`explained`: the gallery's), for the plan's methods and
    layers; the top pairs' maps are averaged over all their images.

    `facts`: the run's facts, curves, trust and maps across training (`RunFacts`). The page
    states the cap on the mistakes explained that chose `explained`: the plan's limit.
    """
    config, facts = config or ReportConfig(), facts or RunFacts()
    began = time.perf_counter()
    split = Split(split.images, split.labels.long())  # any integer labels; losses want int64
    shown, explanations = explained
    chosen = _top_pairs(evaluation.confusion, evaluation.mistakes, config)
    per_method = {}
    if chosen:
        for method in plan.methods:
            got = (shown, explanations.get(method))
            per_method[method] = _pair_maps(
                model, split, evaluation, plan, method, chosen, config, got
            )
    pairs = [
        PairMaps(
            label_index=t,
            pred_index=p,
            count=count,
            used=next(iter(per_method.values()))[3][(t, p)],
            correct=next(iter(per_method.values()))[2][t],
            means={k: v[0][(t, p)] for k, v in per_method.items()},
            outside={k: v[1][(t, p)] for k, v in per_method.items()},
        )
        for t, p, count in chosen
    ]
    return ReportData(
        classes=tuple(classes),
        run_info=dict(facts.run_info),
        history=facts.history,
        evaluation=evaluation,
        mistakes=shown,
        explanations=explanations,
        pairs=pairs,
        layers=plan.hooked_layers,
        model_info=model_facts(model),
        config=config,
        seconds=time.perf_counter() - began,
        trust=facts.trust,
        over_epochs=facts.over_epochs,
        cap=plan.limit,
    )
