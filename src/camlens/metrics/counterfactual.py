"""A counterfactual test for every mistake: does removing what the contrast map points at undo it?

For each mistake (pred != label) and each fraction p (5, 10, 20% by default), the top p of the
pixels of its contrast map ("why the prediction rather than the truth") are removed with ROAD's
noisy linear imputation (road.py: no hole outline for the model to read), and the model is asked
again: the pred-minus-true logit margin and the new prediction are recorded. The same is done
with a smooth random map of the image (drawn at the explained layer's resolution, as the "random"
baseline) and the same imputation noise, so the two removals differ only by where they remove.
Per mistake and fraction: the margin drop, whether the prediction left the predicted class,
whether it became the true class, and whether the map's removal dropped the margin more than
the random one did.

    result = counterfactual(model, images, contrast_maps, preds, labels)
    result.rows()                  # one dict per image: numbers for index.csv
    result.verdicts()              # one line per image, for a card
    confusion_summary(result, classes)   # "cat -> dog: removing 10% of the contrast region..."
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from camlens.cam import eval_mode
from camlens.cam.precision import full_fp32
from camlens.metrics.baselines import baseline_maps
from camlens.metrics.config import MetricConfig
from camlens.metrics.core import make_generator, normal_noise, pixel_ranks
from camlens.metrics.road import coarse_linear_impute

__all__ = ["Counterfactual", "CounterfactualConfig", "confusion_summary", "counterfactual"]


@dataclass(frozen=True)
class CounterfactualConfig:
    """Knobs of `counterfactual`; the imputation's own knobs come from `MetricConfig`'s ROAD."""

    # fractions of the pixels removed, most pointed-at first
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2)
    # the fraction a one-line verdict and the confusion summary speak of
    headline: float = 0.1
    # the random map's resolution, the explained layer's (h, w); None: a stride-8 layer's
    # (layer4 at 32 px: 4x4)
    resolution: tuple[int, int] | None = None
    # seed of the random maps and the imputation noise when no generator is passed
    seed: int = 0
    # what the removed region is the top of, as the verdicts say it: "contrast" (why pred
    # rather than true), or "predicted-class" (a non-linear method's stand-in)
    region: str = "contrast"
    # the imputation's knobs (MetricConfig's ROAD) and the batch of the solve; None: defaults
    metrics: MetricConfig | None = None
    # the imputation's working resolution: a larger image is filled at this longer side, then
    # upsampled and refined by `impute_refine` CG steps at full size (`coarse_linear_impute`):
    # at 224 px the full-size solve cost hours per 1,000 mistakes. None: full size always.
    # At 32 px (CIFAR) nothing changes; the agreement of a coarser fill with the full one is
    # measured by benchmarks/counterfactual_cost.py --agreement (docs/performance.md)
    impute_side: int | None = 64
    impute_refine: int = 16  # CG steps at full size after the coarse fill

    def __post_init__(self) -> None:
        if not self.fractions or not all(0 < f < 1 for f in self.fractions):
            raise ValueError(f"fractions must be strictly between 0 and 1, got {self.fractions}")
        if self.impute_side is not None and self.impute_side < 2:
            raise ValueError(f"impute_side must be >= 2 or None, got {self.impute_side}")
        if self.headline not in self.fractions:
            raise ValueError(f"headline {self.headline} must be one of fractions {self.fractions}")


@dataclass(frozen=True)
class Counterfactual:
    """Per image (N) and fraction (F): the margins and predictions after each removal."""

    fractions: tuple[float, ...]  # (F,) fractions of the pixels removed
    headline: float  # the fraction `verdicts` and `confusion_summary` speak of
    preds: Tensor  # (N,) the predictions explained
    labels: Tensor  # (N,) the true classes
    margin: Tensor  # (N,) logit[pred] - logit[label] on the image
    margin_map: Tensor  # (N, F) the same margin with the contrast map's top pixels removed
    margin_random: Tensor  # (N, F) ... with a smooth random map's top pixels removed
    preds_map: Tensor  # (N, F) the prediction after the map's removal
    preds_random: Tensor  # (N, F) the prediction after the random removal
    # what the removed region is the top of: "contrast" (why pred rather than true), or
    # "predicted-class" where a method has no contrast map and that map stands in
    region: str = "contrast"

    # Derived per-image tensors, each computed once: the gallery, index.csv and the report read
    # them per row, and a property rebuilt on every read made those loops O(N^2).
    @cached_property
    def drop_map(self) -> Tensor:
        """(N, F) how much the margin fell when the map's region was removed."""
        return self.margin[:, None] - self.margin_map

    @cached_property
    def drop_random(self) -> Tensor:
        """(N, F) how much it fell when the random region was removed."""
        return self.margin[:, None] - self.margin_random

    @cached_property
    def left_map(self) -> Tensor:
        """(N, F) bool: the prediction left the predicted class."""
        return self.preds_map != self.preds[:, None]

    @cached_property
    def to_true_map(self) -> Tensor:
        """(N, F) bool: the prediction became the true class."""
        return self.preds_map == self.labels[:, None]

    @cached_property
    def to_true_random(self) -> Tensor:
        return self.preds_random == self.labels[:, None]

    @cached_property
    def beat_random(self) -> Tensor:
        """(N, F) bool: the map's removal dropped the margin more than the random one's."""
        return self.drop_map > self.drop_random

    def rows(self) -> list[dict[str, float | int | bool]]:
        """One dict per image, flat columns named by fraction (e.g. "cf10_drop"), for a csv."""
        tags = [f"cf{round(f * 100)}" for f in self.fractions]
        # every column as Python lists once: indexing tensors per row costs a call per cell
        margin = self.margin.tolist()
        columns = [
            (kind, cast, t.tolist())
            for kind, cast, t in (
                ("drop", lambda v: round(v, 4), self.drop_map),
                ("drop_random", lambda v: round(v, 4), self.drop_random),
                ("pred", int, self.preds_map),
                ("left", bool, self.left_map),
                ("to_true", bool, self.to_true_map),
                ("beat_random", bool, self.beat_random),
            )
        ]
        out = []
        for i in range(len(margin)):
            row: dict[str, float | int | bool] = {"cf_margin": round(margin[i], 4)}
            for j, tag in enumerate(tags):
                for kind, cast, values in columns:
                    row[f"{tag}_{kind}"] = cast(values[i][j])
            out.append(row)
        return out

    def verdicts(self, classes: list[str] | tuple[str, ...] | None = None) -> list[str]:
        """One line per image at the headline fraction, e.g. "removing 10% of the contrast
        region: margin 3.1 -> -0.4 (random region: 2.9), now cat, the true class"."""
        j = self.fractions.index(self.headline)
        name = (lambda c: classes[c]) if classes is not None else str
        lines = []
        columns = (
            self.preds,
            self.labels,
            self.preds_map[:, j],
            self.beat_random[:, j],
            self.margin,
            self.margin_map[:, j],
            self.margin_random[:, j],
        )
        for pred, label, now, beat, before, after, random in zip(
            *(c.tolist() for c in columns), strict=True
        ):
            if now == label:
                outcome = f"now {name(now)}, the true class"
            elif now != pred:
                outcome = f"now {name(now)}, neither predicted nor true"
            else:
                outcome = f"still {name(pred)}"
            better = "beats" if beat else "does not beat"
            lines.append(
                f"removing {self.headline:.0%} of the {self.region} region: margin "
                f"{before:.2f} -> {after:.2f} (random region:"
                f" {random:.2f}, {better} it), {outcome}"
            )
        return lines


@full_fp32()  # TF32 off, restored after (camlens.cam.precision)
def counterfactual(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    preds: Tensor,
    labels: Tensor,
    config: CounterfactualConfig | None = None,
    generator: torch.Generator | None = None,
    *,
    seeds: Tensor | None = None,
) -> Counterfactual:
    """Remove the top of each image's contrast map `maps` (N, H, W), and as much of a smooth
    random map, by noisy linear imputation; the margins and predictions after each removal.

    `images` (N, C, H, W) in [0, 1]; `preds` and `labels` (N,); the maps may be signed (the
    largest values go first). Items (image, map or random, fraction) are flat: each chunk of
    `config.metrics.batch_size` is imputed in one batched solve and scored in one forward.

    `seeds` (N,): each image's random map and noise drawn from a generator of its own seed
    (`generator` unused), so an image's result does not depend on which images share the call:
    the same in any chunk, on any number of ranks. `config.region` names the map in the
    verdicts.
    """
    config = config or CounterfactualConfig()
    mc = config.metrics or MetricConfig()
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError("images must be a float (N, C, H, W) tensor in [0, 1]")
    n, c, h, w = images.shape
    if not isinstance(maps, Tensor) or tuple(maps.shape) != (n, h, w):
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be (N, H, W) = {(n, h, w)} like images, got {got}")
    preds = torch.as_tensor(preds, device=images.device).long()
    labels = torch.as_tensor(labels, device=images.device).long()
    if preds.shape != (n,) or labels.shape != (n,):
        raise ValueError(f"preds and labels must be ({n},) class indices like images")
    fractions, nf = config.fractions, len(config.fractions)
    hw = h * w
    counts = torch.tensor([round(f * hw) for f in fractions], device=images.device)
    if seeds is None:
        random, noise = _random_and_noise(
            (n, c, h, w), make_generator(generator, config.seed), config, mc, images.device
        )
    else:
        if tuple(seeds.shape) != (n,):
            raise ValueError(f"seeds must be ({n},) like images, got {tuple(seeds.shape)}")
        drawn = [
            _random_and_noise(
                (1, c, h, w), torch.Generator().manual_seed(int(s)), config, mc, images.device
            )
            for s in seeds.tolist()
        ]
        random = torch.cat([r for r, _ in drawn]) if n else maps.new_zeros(0, h, w)
        noise = torch.cat([z for _, z in drawn]) if n and mc.road_noise > 0 else None
    ranks = torch.stack([pixel_ranks(maps.float()), pixel_ranks(random)], 1)  # (N, 2, H*W)
    m = 2 * nf  # items per image: (map, random) x fractions

    def margin_of(logits: Tensor, rows: Tensor) -> Tensor:
        picked = logits.float().gather(1, torch.stack([preds[rows], labels[rows]], 1))
        return picked[:, 0] - picked[:, 1]  # (B, 2) -> (B,)

    margins, new_preds = [], []
    with torch.no_grad(), eval_mode(model):
        logits = model(images)  # (N, K)
        base = margin_of(logits, torch.arange(n, device=images.device))
        total = n * m
        for start in range(0, total, mc.batch_size):
            flat = torch.arange(start, min(start + mc.batch_size, total), device=images.device)
            i, j = flat // m, flat % m
            which, k = j // nf, j % nf  # 0: the contrast map, 1: the random map
            removed = (ranks[i, which] < counts[k, None]).view(-1, h, w)
            part = None if noise is None else noise[i]
            x = coarse_linear_impute(
                images[i], removed, part, mc.road_tol, mc.road_max_iter,
                config.impute_side, config.impute_refine,
            )  # fmt: skip
            out = model(x)  # (B, K)
            margins.append(margin_of(out, i))
            new_preds.append(out.argmax(1))
    got = torch.cat(margins).view(n, 2, nf)
    after = torch.cat(new_preds).view(n, 2, nf)
    return Counterfactual(
        fractions=tuple(fractions),
        headline=config.headline,
        preds=preds,
        labels=labels,
        margin=base,
        margin_map=got[:, 0],
        margin_random=got[:, 1],
        preds_map=after[:, 0],
        preds_random=after[:, 1],
        region=config.region,
    )


def _random_and_noise(
    shape: tuple[int, int, int, int],
    g: torch.Generator,
    config: CounterfactualConfig,
    mc: MetricConfig,
    device: torch.device,
) -> tuple[Tensor, Tensor | None]:
    """The smooth random maps (N, H, W) and the imputation noise (N, C, H, W) of `shape`."""
    random = baseline_maps(shape, "random", g, device, config.resolution)
    noise = None
    if mc.road_noise > 0:  # one field per image, shared by both maps and every fraction
        noise = mc.road_noise * normal_noise(shape, g, device)
    return random, noise


def confusion_summary(
    result: Counterfactual, classes: list[str] | tuple[str, ...] | None = None
) -> list[str]:
    """One line per (true -> predicted) pair, most frequent first, at the headline fraction:
    "cat -> dog: removing 10% of the contrast region turns 5 of 7 into cat; random regions 1"."""
    j = result.fractions.index(result.headline)
    name = (lambda c: classes[c]) if classes is not None else str
    to_true_map = result.to_true_map[:, j].tolist()
    to_true_random = result.to_true_random[:, j].tolist()
    pairs: dict[tuple[int, int], list[int]] = {}  # (label, pred) -> [members, by map, by random]
    for label, pred, by_map, by_random in zip(
        result.labels.tolist(), result.preds.tolist(), to_true_map, to_true_random, strict=True
    ):
        acc = pairs.setdefault((label, pred), [0, 0, 0])
        acc[0], acc[1], acc[2] = acc[0] + 1, acc[1] + by_map, acc[2] + by_random
    lines = []
    for (label, pred), (members, by_map, by_random) in sorted(
        pairs.items(), key=lambda kv: (-kv[1][0], kv[0])
    ):
        lines.append(
            f"{name(label)} -> {name(pred)}: removing {result.headline:.0%} of the "
            f"{result.region} region "
            f"turns {by_map} of {members} into {name(label)}; random regions turn {by_random}"
        )
    return lines
