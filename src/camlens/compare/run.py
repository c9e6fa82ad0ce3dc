"""Can these maps be trusted? Every method and layer scored on the mistakes and on correct images.

    plan = ExplainPlan(methods=("gradcam", "scorecam"), layers=("layer4",), compare_limit=32)
    result = compare(model, data, out, plan)
    result.rows          # one dict per (method, layer, subset, metric): mean, ci_low, ci_high, n
    result.paired        # each of those against each baseline: diff, interval, Holm decision
    result.sanity        # method -> the checks' numbers and a named state (VERDICTS)
    result.summary       # the grid test's line, each method's state, the paired headline
    result.grid          # the grid localisation test: which map finds its class's tile

Each (method, layer) explains the `limit` most confident mistakes (maps of the predicted class:
what drove the mistake) and as many correctly classified images (a seeded sample, maps of their
class); the baselines are scored on the same images with the same targets, so every score has a
reference: the centre map, and a smooth random map drawn at each layer's own grid. Every
(method, layer, subset, metric) is judged against each baseline on the per-image differences
(paired bootstrap, images resampled jointly, Holm over every paired cell of the compare). The
sanity checks (cascading randomisation judged at every step, Random Logit, eMPRT, the method's
self-agreement) run per method at the last layer on a few mistakes and end in a named state.
First in the summary, the grid localisation test (compare.grid, camlens.metrics.grid): n x n
confident, correct images of distinct classes in one input, the map of each class judged by the
share of its mass in its own tile, where the centre map scores exactly 1/n^2.
A (method, layer) the method cannot explain (CAM needs the layer feeding GAP -> fc) is left
out and listed in `skipped`. A layer "layer3+layer4" is one engine
on both layers, scored as its one combined map (RefineCAM's product, other methods' mean).
Everything is checked before any scoring and written only at the end: compare.csv,
compare.json (what the report reads), compare.png (the table) and sanity.png. Before scoring,
compare says what it will score and how long that should take, from the model's forward cost and
each method's map cost measured on a few images; the progress bar counts forwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from camlens.atomic import atomic_write_files
from camlens.cam import CamConfig
from camlens.choices import COMPARE_LIMIT, COMPARE_METHODS
from camlens.classifier import adapt_user_input, own_layer_names
from camlens.compare.budget import forward_seconds, score_forwards
from camlens.compare.budget import plan as make_estimate
from camlens.compare.figures import sanity_figure, table_figure
from camlens.compare.grid import grid_test
from camlens.compare.sanity import run_sanity
from camlens.compare.summary import headline, sanity_lines
from camlens.compare.table import (
    COLUMNS,
    FAITHFUL,
    PLAIN,
    beats_baselines,
    csv_bytes,
    indistinguishable_from,
    metric_rows,
    paired_rows,
    select_subsets,
)
from camlens.distributed import all_sum, is_writer, rank, world_size
from camlens.evaluate import as_float_images, predict
from camlens.explain import ExplainError, ExplainPlan, check_explainable, engine_for
from camlens.metrics import (
    BASELINE_KINDS,
    BASELINES,
    HIGHER_IS_BETTER,
    METRICS,
    VERDICTS,
    MetricConfig,
    baseline_engine,
    baseline_maps,
    cascade_order,
    deletion_variant,
    score_maps,
)
from camlens.metrics.grid import GridConfig, grid_maps
from camlens.plots import figure_png

__all__ = [
    "COMPARE_LIMIT",
    "COMPARE_METHODS",
    "COMPARE_PLAN",
    "FILES",
    "CompareResult",
    "EngineMaker",
    "compare",
]

FILES = ("compare.csv", "compare.json", "compare.png", "sanity.png")
# what `compare` scores when given no plan: the methods that fit the budget at layer3 and layer4
COMPARE_PLAN = ExplainPlan(
    methods=COMPARE_METHODS, layers=("layer3", "layer4"), compare_limit=COMPARE_LIMIT
)
# compare's grid localisation test unless told: 2x2 grids, at most 64 (GridConfig's defaults)
GRID_TEST = GridConfig()
# a method of the caller's own: (model, layers) -> engine, `(images, targets) -> (N, H, W)`
EngineMaker = Callable[
    [nn.Module, Sequence[str]], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
]


@dataclass(frozen=True)
class CompareResult:
    """What `compare` measured and where it wrote it."""

    rows: list[dict]  # the table, PLAIN columns per row; baselines have their kind as method
    skipped: dict[tuple[str, str], str]  # (method, layer) a method cannot explain -> why
    sanity: dict[str, dict]  # method -> layer, steps, spearman per step, state, reasons, ...
    files: dict[str, Path]  # name -> out/name for each of FILES
    paired: list[dict] = field(default_factory=list)  # COLUMNS: each cell against each baseline
    plan: dict = field(default_factory=dict)  # what was scored and the forwards it was to cost
    # the grid test's line, each method's sanity state, then the paired headline, in words
    # (compare.json "summary")
    summary: list[str] = field(default_factory=list)
    # the grid localisation test (compare.grid): settings, rows, paired, line; {}: not asked
    grid: dict = field(default_factory=dict)


def compare(
    model: nn.Module,
    data: Any,  # a camlens Dataset or the user's own data (adapt_user_input)
    out: str | Path,
    plan: ExplainPlan | None = None,
    *,
    sanity_images: int = 16,
    metric_config: MetricConfig | None = None,
    baselines: Sequence[str] = BASELINES,
    alpha: float = 0.05,
    announce: Callable[[str], None] | None = None,
    engines: Mapping[str, EngineMaker] | None = None,
    grid: GridConfig | None = GRID_TEST,
) -> CompareResult:
    """Score every (method, layer) of `plan` and the baselines on `data.test`; write FILES.

    `plan` (default `COMPARE_PLAN`): the methods and layers compared, `compare_limit` mistakes
    (and as many correct images; None: 32, what fits minutes on 2 CPU cores), the batch sizes
    (`eval_batch_size` for every inference and scoring forward), precision, `seed`, the
    methods' knobs (`cam`; None: Score-CAM's top_k 32, Faster Score-CAM, as full Score-CAM
    costs ~2 s per image per layer on a laptop CPU) and `progress`.
    `sanity_images`: mistakes the sanity checks run on. `baselines`: BASELINES by default;
    "random-pixel" (i.i.d. pixels) on request. `alpha`: the family-wise error rate of the
    paired decisions (Holm over every paired cell). `announce` receives the plan and the time
    estimate before scoring (default: the progress bar's stream when `progress`, else nothing).
    `engines`: methods of your own by name, `(model, layers) -> engine`, an engine being any
    `(images, targets) -> (N, H, W)` maps in [0, 1] (with `close()` if it holds hooks); name
    them in `plan.methods` beside METHODS names. A fixed or random "method" gets the same
    table and sanity verdict as a real one, so this is also how the checks are tested.
    `data`: a camlens `Dataset` or the user's own test data as it is (see adapt_user_input).
    `grid`: the grid localisation test (camlens.metrics.grid) of every scored (method, layer)
    on n x n grids of confident, correct test images, which leads the summary; None: not run.
    Too few images for it is said in its line, and the rest of compare runs.
    """
    model, data = adapt_user_input(model, data)  # a DataLoader, arrays: a Dataset, once
    plan = plan or COMPARE_PLAN
    engines = dict(engines or {})
    if plan.cam is None:  # Score-CAM on all channels would not fit the budget
        plan = replace(plan, cam=CamConfig(top_k=32))
    methods = plan.methods
    # a wrapped model's own layer names work too
    layers = tuple(own_layer_names(model, plan.layers or COMPARE_PLAN.layers))
    limit = COMPARE_LIMIT if plan.compare_limit is None else plan.compare_limit
    seed, progress = plan.seed, plan.progress
    taken = [name for name in engines if name in BASELINE_KINDS]
    if taken:  # its rows would be read as the baseline's
        raise ExplainError(
            f"engines= names a baseline ({', '.join(taken)}): call your method something else"
        )
    named = [m for m in methods if m not in engines]
    # "layer3+layer4": one engine on both layers, scored as one map (the layers' mean, or
    # RefineCAM's product)
    hooked = list(dict.fromkeys(p for la in layers for p in _parts(la)))
    check_explainable(model, named or ("gradcam",), hooked, plan.precision)
    if sanity_images < 1:
        raise ExplainError(f"sanity_images must be >= 1, got {sanity_images}")
    unknown = [b for b in baselines if b not in BASELINE_KINDS]
    if unknown or not baselines:
        raise ExplainError(f"baselines must name some of {', '.join(BASELINE_KINDS)}: {unknown}")
    if not 0 < alpha < 1:
        raise ExplainError(f"alpha must be in (0, 1), got {alpha}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExplainError(f"--out {out} is a file: name a folder")
    device = next(model.parameters()).device
    labels = data.test.labels
    logits = predict(model, data.test.images, plan.eval_batch_size).cpu()
    if logits.shape[1] != len(data.classes):
        raise ExplainError(
            f"the model has {logits.shape[1]} classes but the data {len(data.classes)}: "
            "pass the data it was trained on"
        )
    subsets = select_subsets(logits, labels, limit, seed)
    if subsets["mistakes"].numel() == 0:
        raise ExplainError("the model makes no mistakes on this test split: nothing to compare")
    cfg = metric_config or MetricConfig(seed=seed, batch_size=plan.eval_batch_size)

    def opened(method: str, model: nn.Module, layer: str, seed: int | None = None):
        """The engine of `method` at `layer`: the caller's own, or the plan's (explain.py)."""
        if method in engines:
            return engines[method](model, _parts(layer))
        return engine_for(method, model, _parts(layer), plan, seed=seed)

    # the forward's cost, then each (method, layer) once on a few images: CAM needs the layer
    # that feeds GAP -> fc, so this also finds the pairs a method cannot explain
    probe = as_float_images(data.test.images[: min(8, len(data.test.images))]).to(device)
    probe_targets = logits[: probe.shape[0]].argmax(1).to(device)
    # scoring runs cfg.batch_size images per forward; a small batch costs more per image, so
    # the forward is timed on up to 64 (the probe repeated): close to the real rate, cheap
    batch = probe.repeat(-(-min(64, cfg.batch_size) // probe.shape[0]), 1, 1, 1)
    forward_s = forward_seconds(model, batch[: min(64, cfg.batch_size)])
    pairs, skipped, map_cost, grids = [], {}, {}, {}
    for method in methods:
        for layer in layers:
            try:
                with _closed(opened(method, model, layer)) as engine:
                    start = time.perf_counter()
                    # an engine of camlens says its layers' grids; one of the caller's does not
                    explain = getattr(engine, "explain", None)
                    result = (explain or engine)(probe, probe_targets)
                    took = time.perf_counter() - start
                pairs.append((method, layer))
                # map cost in forward equivalents per image (at least the one forward it needs)
                map_cost[(method, layer)] = max(1.0, took / probe.shape[0] / forward_s)
                if explain is not None:
                    own = max(tuple(m.shape[-2:]) for m in result.low_res)
                    # the layer's own grid: input-resolution methods (FullGrad) map at 32x32
                    grids[layer] = min(grids.get(layer, own), own)
            except ValueError as e:
                skipped[(method, layer)] = str(e)
    if not pairs:
        raise ExplainError(f"no method can explain these layers: {next(iter(skipped.values()))}")
    # under torchrun every rank timed its own probe; their mean is the one every rank uses, so
    # the ranks agree on the estimate and on the tasks' costs
    timed = all_sum(torch.tensor([forward_s, *(map_cost[p] for p in pairs)], dtype=torch.float64))
    forward_s, *costs = (timed / world_size()).tolist()
    map_cost = dict(zip(pairs, costs, strict=True))
    sanity_layer = layers[-1]
    sanity_methods = [m for m in methods if (m, sanity_layer) in pairs]
    scored_layers = list(dict.fromkeys(layer for _, layer in pairs))
    reference = [
        (kind, layer)
        for kind in baselines
        for layer in (scored_layers if kind == "random" else ["-"])
    ]
    # the work is a list of tasks, one per (subset, method, layer) and baseline; under torchrun
    # each rank scores every world-th task and the tables are summed over the ranks. Each task
    # seeds its own generators, so every score equals the one a single process computes.
    tasks = [(subset, method, layer) for subset in subsets for method, layer in pairs + reference]
    per_image = score_forwards(cfg)
    steps = len(cascade_order(model))
    cost = {
        task: subsets[task[0]].numel()
        * (per_image + 2 * map_cost.get((task[1], task[2]), 0.0))  # the map, ARCC's re-run
        for task in tasks
    }
    sanity_count = min(sanity_images, subsets["mistakes"].numel())
    sanity_cost = {
        m: sanity_count * (steps + 3) * map_cost[(m, sanity_layer)] for m in sanity_methods
    }
    # the whole job's forwards; its time is that of the rank with the largest share (one
    # process: all of it), as the ranks work side by side
    share = max(
        sum(cost[t] for t in tasks[r :: world_size()])
        + sum(sanity_cost[m] for m in sanity_methods[r :: world_size()])
        for r in range(world_size())
    )
    estimate = make_estimate(
        pairs,
        reference,
        subsets,
        sanity_methods,
        sanity_count,
        cost,
        sanity_cost,
        forward_s,
        share=share,
        world=world_size(),
    )
    say = announce or ((lambda line: tqdm.write(line)) if progress else (lambda line: None))
    if is_writer():
        say(estimate["summary"])
    n_max = max(int(v.numel()) for v in subsets.values())
    values = torch.zeros(len(tasks), len(METRICS), 4, dtype=torch.float64)  # mean, lo, hi, n
    images_values = torch.zeros(len(tasks), len(METRICS), n_max, dtype=torch.float64)
    undefined = torch.zeros_like(images_values)  # 1 where a per-image value is NaN (ARCC)
    mine = range(rank(), len(tasks), world_size())
    sanity_mine = sanity_methods[rank() :: world_size()]
    total = sum(cost[tasks[i]] for i in mine) + sum(sanity_cost[m] for m in sanity_mine)
    bar = tqdm(total=round(total), desc="compare", unit="forward", disable=not progress)
    for i in mine:
        subset, method, layer = tasks[i]
        bar.set_postfix_str(f"{subset}: {method} {layer}")
        idx = subsets[subset]
        images = as_float_images(data.test.images[idx]).to(device)  # (n, 3, H, W)
        targets = logits[idx].argmax(1).to(device)  # the predicted class; the label when correct
        if method in BASELINE_KINDS:  # one map per image; "random" at its layer's grid
            own = grids.get(layer)
            g = torch.Generator(device).manual_seed(seed)
            cams = baseline_maps(images.shape, method, g, device, own)
            engine = baseline_engine(method, torch.Generator(device).manual_seed(seed + 1), own)
            scores = score_maps(model, images, cams, targets, engine=engine, config=cfg)
        else:
            with _closed(opened(method, model, layer)) as engine:
                cams = engine(images, targets).detach()  # (n, H, W)
                scores = score_maps(model, images, cams, targets, engine=engine, config=cfg)
        for j, row in enumerate(metric_rows(method, layer, subset, scores.values, seed)):
            values[i, j] = torch.tensor(
                [row["mean"], row["ci_low"], row["ci_high"], row["n"]], dtype=torch.float64
            )
            v = scores.values[METRICS[j]].detach().double().cpu()  # (n,)
            undefined[i, j, : v.numel()] = torch.isnan(v).double()
            images_values[i, j, : v.numel()] = torch.nan_to_num(v, nan=0.0)
        bar.update(round(cost[tasks[i]]))
    all_sum(values)  # each task's row filled by exactly one rank, zeros elsewhere
    all_sum(images_values)
    all_sum(undefined)
    rows = [
        dict(zip(PLAIN, (method, layer, subset, metric, *_cells(values[i, j])), strict=True))
        for i, (subset, method, layer) in enumerate(tasks)
        for j, metric in enumerate(METRICS)
    ]
    per_task = {
        task: torch.where(undefined[i] > 0, torch.nan, images_values[i])[
            :, : subsets[task[0]].numel()
        ]
        for i, task in enumerate(tasks)
    }
    paired = paired_rows(rows, per_task, subsets, pairs, reference, alpha, seed)
    sanity, sanity_maps = run_sanity(
        model,
        data,
        subsets["mistakes"],
        logits,
        sanity_methods,
        sanity_layer,
        sanity_count,
        opened,
        seed,
        device,
        bar,
        sanity_cost,
    )
    grid_result = {}
    if grid is not None:
        # every rank runs the same seeded test (cheap beside the scoring): each has its line

        def maps_of(method: str, layer: str, grids):
            with _closed(opened(method, model, layer)) as engine:
                return grid_maps(engine, grids)

        bar.set_postfix_str("grid test")
        grid_result = grid_test(
            model,
            data.test.images,
            labels,
            logits,
            pairs,
            maps_of,
            grid,
            alpha,
            seed,
            plan.eval_batch_size,
        )
    bar.close()
    said = headline(rows + paired, alpha)
    summary = ([grid_result["line"]] if grid_result else []) + sanity_lines(sanity) + said
    if not is_writer():
        return CompareResult(rows, skipped, sanity, {}, paired, estimate, summary, grid_result)
    files = {name: out / name for name in FILES}
    payload = {
        "columns": list(COLUMNS),
        "rows": rows,
        "paired": paired,
        "sanity": sanity,
        "verdicts": VERDICTS,
        "higher_is_better": {m: HIGHER_IS_BETTER[m] for m in METRICS},
        "beats_baselines": [list(k) for k, win in beats_baselines(rows + paired).items() if win],
        "indistinguishable_from_centre": indistinguishable_from(paired, "centre"),
        "summary": summary,  # the grid test's line, each method's state, then `headline`
        "grid": grid_result,  # the grid localisation test; {}: not run
        "headline": said,  # the paired verdicts in words
        # the metrics that rank maps as known evidence does lead; the others last, with why
        "lead_metrics": list(FAITHFUL),
        "shown_last": {
            "drop": "rewards maps that cover more: the exact evidence map drops more than "
            "Grad-CAM on the known-evidence set",
            "increase": "the same masking as drop, counted as a yes/no per image",
            "arcc": "mixes faithfulness with coherency and complexity",
        },
        "settings": {
            "limit": limit,
            "top_k": plan.cam.top_k,
            "seed": seed,
            "methods": list(methods),
            "layers": list(layers),
            "images": {k: int(v.numel()) for k, v in subsets.items()},
            "skipped": {f"{m} {lay}": why for (m, lay), why in skipped.items()},
            "baselines": {
                "random": "uniform values on the layer's grid, upsampled and min-max "
                "normalised as a CAM: " + ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in grids.items()),
                "centre": "a centred Gaussian, sigma a quarter of the shorter side",
                "random-pixel": "each pixel uniform, i.i.d.",
            },
            "deletion": deletion_variant(cfg),
            "paired": f"per-image differences, bootstrap-t (images resampled jointly per "
            f"subset), Holm over all {len(paired)} paired cells at alpha {alpha}",
            "alpha": alpha,
            "estimate": estimate,
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_files(
        {
            files["compare.csv"]: csv_bytes(rows + paired),
            files["compare.json"]: (json.dumps(payload, indent=1) + "\n").encode(),
            files["compare.png"]: figure_png(table_figure(rows + paired)),
            files["sanity.png"]: figure_png(sanity_figure(sanity, sanity_maps)),
        }
    )
    return CompareResult(rows, skipped, sanity, files, paired, estimate, summary, grid_result)


def _cells(v: torch.Tensor) -> tuple:
    """(mean, ci_low, ci_high, n) of a row as the plain numbers a single process writes."""
    return float(v[0]), float(v[1]), float(v[2]), int(v[3])


def _parts(layer: str) -> list[str]:
    """The layers of one compared entry: "layer3+layer4" is one engine on both."""
    return layer.split("+")


@contextmanager
def _closed(engine):
    """Close an engine after use if it has `close` (camlens engines do; a function need not)."""
    try:
        yield engine
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
