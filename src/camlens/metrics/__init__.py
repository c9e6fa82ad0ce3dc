"""Can a map be trusted? Faithfulness metrics and a sanity check: maps in, scores out.

    scores = score_maps(model, images, maps, targets, engine=cam)   # Scores: values, curves
    scores.values["deletion"]                     # (N,) per image; see HIGHER_IS_BETTER
    random = baseline_maps(images.shape, "random", generator)      # scored the same way
    result = sanity_check(model, images, targets, lambda m: GradCAM(m, "layer4"))
    sanity_verdict(result).passed
    mean, low, high = bootstrap_ci(scores.values["insertion"])

Every metric scores the softmax probability of the target class; perturbed copies of many
images go through the model together, `batch_size` per forward pass, on the images' device.

Public API (images (N, C, H, W) in [0, 1]; maps (N, H, W) in [0, 1]; targets (N,) or an int):
    score_maps(model, images, maps, targets, metrics=METRICS, engine=None, config=None,
               generator=None, **overrides) -> Scores(values, curves, probs)
    METRICS, HIGHER_IS_BETTER, MetricConfig, REPLACEMENTS
    perturbation_curves(model, images, maps, targets, config, probs, which)  deletion, insertion
        (default RISE's substrates; deletion_variant(config) names the one used)
    drop_increase(model, images, maps, targets, config, probs)   Average Drop, Increase
    road_curves(model, images, maps, targets, fractions, config, generator), road_score,
    noisy_linear_impute(images, removed, noise, tol, max_iter), neighbour_sum       ROAD
    arcc(coherency, complexity, road), coherency(engine, images, maps, targets), complexity
    baseline_maps(shape, kind, generator, device, resolution),
    baseline_engine(kind, generator, resolution),
    BASELINES ("random": smooth, at the layer's resolution; "centre"),
    BASELINE_KINDS (+ "random-pixel")
    sanity_check(model, images, targets, make_engine, layers, generator, keep, make_twin)
        -> SanityResult (cascade similarity, self-agreement, Random Logit, entropy, flat maps)
    sanity_verdict(result, rules=SanityRules()) -> SanityVerdict: state in VERDICTS (passes,
    class-blind, model-blind, uninformative) and reasons; judge_sanity(means...) the same
    verdict from image means; cascade_order, reinitialise,
    similarity, spearman, ssim, map_entropy, is_flat
    counterfactual(model, images, maps, preds, labels, config, generator)
        -> Counterfactual: the top 5/10/20% of each contrast map removed by ROAD's imputation,
        against a smooth random map; .rows(), .verdicts(classes); confusion_summary(result)
    make_grids(model, images, labels, logits, GridConfig(n, count, confidence, min_grids, seed))
        -> Grids: n x n confident correct images of distinct classes in one input ("pooled"
        n·H x n·W, or "resized" to H x W), kept when the top-n^2 logits are their classes;
        GridError ("too few images for the grid test") otherwise; grid_maps(engine, grids),
        grid_scores(native, inputs, n) -> GRID_METRICS per grid (share in the class's tile,
        at native and input resolution, pointing); grid_baseline_maps(kind, grids, size) for
        GRID_BASELINES (centre and random: exactly 1/n^2 by construction; oracle: the tile);
        tile_masks, tile_scores (Böhle 2022, Rao 2022's grid pointing game)
    bootstrap_ci(values, n_boot, level, generator) -> (mean, low, high)
    paired_bootstrap(diffs (R, N), n_boot, level, generator, threshold) -> Paired(diff, low,
        high, p, p_holm, n): images resampled jointly for every row, Holm over the rows, enough
        resamples for p to pass Holm's first threshold (alpha / family size); holm(p);
        paired_decision(diff, p_holm, higher_is_better, alpha) -> better/worse/indistinguishable;
        PAIRED_MIN_IMAGES: fewer images get no interval and the decision TOO_FEW
"""

from camlens.metrics.arcc import arcc, coherency, complexity
from camlens.metrics.baselines import (
    BASELINE_KINDS,
    BASELINES,
    baseline_engine,
    baseline_maps,
    default_resolution,
)
from camlens.metrics.config import REPLACEMENTS, MetricConfig
from camlens.metrics.counterfactual import (
    Counterfactual,
    CounterfactualConfig,
    confusion_summary,
    counterfactual,
)
from camlens.metrics.grid import (
    GRID_BASELINES,
    GRID_METRICS,
    GRID_TOO_FEW,
    GridConfig,
    GridError,
    Grids,
    grid_baseline_maps,
    grid_maps,
    grid_scores,
    make_grids,
    tile_masks,
    tile_scores,
)
from camlens.metrics.perturb import (
    deletion_variant,
    drop_increase,
    perturbation_curves,
    replacement_images,
)
from camlens.metrics.road import neighbour_sum, noisy_linear_impute, road_curves, road_score
from camlens.metrics.sanity import (
    SanityResult,
    cascade_order,
    is_flat,
    map_entropy,
    reinitialise,
    sanity_check,
    similarity,
    spearman,
    ssim,
)
from camlens.metrics.score import HIGHER_IS_BETTER, METRICS, Scores, score_maps
from camlens.metrics.stats import (
    PAIRED_MIN_IMAGES,
    TOO_FEW,
    Paired,
    bootstrap_ci,
    holm,
    paired_bootstrap,
    paired_decision,
)
from camlens.metrics.verdicts import (
    VERDICTS,
    SanityRules,
    SanityVerdict,
    judge_sanity,
    sanity_verdict,
)

__all__ = [
    "BASELINES",
    "BASELINE_KINDS",
    "Counterfactual",
    "CounterfactualConfig",
    "GRID_BASELINES",
    "GRID_METRICS",
    "GRID_TOO_FEW",
    "GridConfig",
    "GridError",
    "Grids",
    "HIGHER_IS_BETTER",
    "METRICS",
    "MetricConfig",
    "PAIRED_MIN_IMAGES",
    "Paired",
    "REPLACEMENTS",
    "SanityResult",
    "SanityRules",
    "SanityVerdict",
    "Scores",
    "TOO_FEW",
    "VERDICTS",
    "arcc",
    "baseline_engine",
    "baseline_maps",
    "bootstrap_ci",
    "cascade_order",
    "coherency",
    "complexity",
    "confusion_summary",
    "counterfactual",
    "default_resolution",
    "deletion_variant",
    "drop_increase",
    "grid_baseline_maps",
    "grid_maps",
    "grid_scores",
    "holm",
    "is_flat",
    "judge_sanity",
    "make_grids",
    "map_entropy",
    "neighbour_sum",
    "noisy_linear_impute",
    "paired_bootstrap",
    "paired_decision",
    "perturbation_curves",
    "reinitialise",
    "replacement_images",
    "road_curves",
    "road_score",
    "sanity_check",
    "sanity_verdict",
    "score_maps",
    "similarity",
    "spearman",
    "ssim",
    "tile_masks",
    "tile_scores",
]
