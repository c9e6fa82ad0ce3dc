"""Can these maps be trusted? Every method and layer scored on the mistakes and on correct images.

    result = compare(model, data, out, methods=("gradcam", "scorecam"), layers=("layer4",))
    result.rows          # one dict per (method, layer, subset, metric): mean, ci_low, ci_high, n
    result.paired        # each of those against each baseline: diff, interval, Holm decision
    result.sanity        # method -> the checks' numbers and a named state (VERDICTS)

Each (method, layer) explains the `limit` most confident mistakes (maps of the predicted class:
what drove the mistake) and as many correctly classified images (a seeded sample, maps of their
class); the baselines are scored on the same images with the same targets, so every score has a
reference: the centre map, and a smooth random map drawn at each layer's own grid. Every
(method, layer, subset, metric) is judged against each baseline on the per-image differences
(paired bootstrap, images resampled jointly, Holm over every paired cell of the compare). The
sanity checks (cascading randomisation judged at every step, Random Logit, eMPRT, the method's
self-agreement) run per method at the last layer on a few mistakes and end in a named state.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from camlens.atomic import atomic_write_files
from camlens.cam import CamConfig, create
from camlens.choices import COMPARE_METHODS
from camlens.compare.budget import forward_seconds, score_forwards
from camlens.compare.budget import plan as make_plan
from camlens.compare.figures import sanity_figure, table_figure
from camlens.compare.sanity import run_sanity
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
from camlens.data import Dataset
from camlens.distributed import all_sum, is_writer, rank, world_size
from camlens.evaluate import as_float_images, predict
from camlens.explain import ExplainError, check_explainable
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
from camlens.plots import figure_png

__all__ = ["COMPARE_METHODS", "FILES", "CompareResult", "compare"]

FILES = ("compare.csv", "compare.json", "compare.png", "sanity.png")


@dataclass(frozen=True)
class CompareResult:
    """What `compare` measured and where it wrote it."""

    rows: list[dict]  # the table, PLAIN columns per row; baselines have their kind as method
    skipped: dict[tuple[str, str], str]  # (method, layer) a method cannot explain -> why
    sanity: dict[str, dict]  # method -> layer, steps, spearman per step, state, reasons, ...
    files: dict[str, Path]  # name -> out/name for each of FILES
    paired: list[dict] = field(default_factory=list)  # COLUMNS: each cell against each baseline
    plan: dict = field(default_factory=dict)  # what was scored and the forwards it was to cost


def compare(
    model: nn.Module,
    data: Dataset,
    out: str | Path,
    *,
    methods: Sequence[str] = COMPARE_METHODS,
    layers: Sequence[str] = ("layer3", "layer4"),
    limit: int = 32,
    top_k: int | None = 32,
    sanity_images: int = 16,
    cam_batch_size: int = 64,
    eval_batch_size: int = 256,
    seed: int = 0,
    metric_config: MetricConfig | None = None,
    progress: bool = True,
    baselines: Sequence[str] = BASELINES,
    alpha: float = 0.05,
    announce: Callable[[str], None] | None = None,
) -> CompareResult:
    """Score every (method, layer) and the baselines on `data.test`; write FILES into `out`.

    `top_k`: Score-CAM keeps each image's k highest-variance channels (Faster Score-CAM), as
    full Score-CAM costs ~2 s per image per layer on a laptop CPU; None: all channels.
    `baselines`: BASELINES by default; "random-pixel" (i.i.d. pixels) on request. `alpha`: the
    family-wise error rate of the paired decisions (Holm over every paired cell). `announce`
    receives the plan and the time estimate before scoring (default: the progress bar's
    stream when `progress`, else nothing).
    """
    # "layer3+layer4": one engine on both layers, scored as one map (the layers' mean, or
    # RefineCAM's product)
    check_explainable(model, methods, list(dict.fromkeys(p for la in layers for p in _parts(la))))
    if limit < 1:
        raise ExplainError(f"--limit must be >= 1, got {limit}: the images scored per subset")
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
    logits = predict(model, data.test.images, eval_batch_size).cpu()
    if logits.shape[1] != len(data.classes):
        raise ExplainError(
            f"the model has {logits.shape[1]} classes but the data {len(data.classes)}: "
            "pass the data it was trained on"
        )
    subsets = select_subsets(logits, labels, limit, seed)
    if subsets["mistakes"].numel() == 0:
        raise ExplainError("the model makes no mistakes on this test split: nothing to compare")
    cam_config = CamConfig(batch_size=cam_batch_size, top_k=top_k)
    cfg = metric_config or MetricConfig(seed=seed)
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
                with create(method, model, _parts(layer), cam_config.for_method(method)) as engine:
                    start = time.perf_counter()
                    result = engine.explain(probe, probe_targets)
                    took = time.perf_counter() - start
                pairs.append((method, layer))
                # map cost in forward equivalents per image (at least the one forward it needs)
                map_cost[(method, layer)] = max(1.0, took / probe.shape[0] / forward_s)
                grids[layer] = max(tuple(m.shape[-2:]) for m in result.low_res)
            except ValueError as e:
                skipped[(method, layer)] = str(e)
    if not pairs:
        raise ExplainError(f"no method can explain these layers: {next(iter(skipped.values()))}")
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
    plan = make_plan(
        pairs, reference, subsets, sanity_methods, sanity_count, cost, sanity_cost, forward_s
    )
    say = announce or ((lambda line: tqdm.write(line)) if progress else (lambda line: None))
    if is_writer():
        say(plan["summary"])
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
            grid = grids.get(layer)
            g = torch.Generator(device).manual_seed(seed)
            cams = baseline_maps(images.shape, method, g, device, grid)
            engine = baseline_engine(method, torch.Generator(device).manual_seed(seed + 1), grid)
            scores = score_maps(model, images, cams, targets, engine=engine, config=cfg)
        else:
            with create(method, model, _parts(layer), cam_config.for_method(method)) as engine:
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
        cam_config,
        seed,
        device,
        bar,
        sanity_cost,
    )
    bar.close()
    if not is_writer():
        return CompareResult(rows, skipped, sanity, {}, paired, plan)
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
            "top_k": top_k,
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
            "estimate": plan,
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
    return CompareResult(rows, skipped, sanity, files, paired, plan)


def _cells(v: torch.Tensor) -> tuple:
    """(mean, ci_low, ci_high, n) of a row as the plain numbers a single process writes."""
    return float(v[0]), float(v[1]), float(v[2]), int(v[3])


def _parts(layer: str) -> list[str]:
    """The layers of one compared entry: "layer3+layer4" is one engine on both."""
    return layer.split("+")
