"""Can these maps be trusted? Every method and layer scored on the mistakes and on correct images.

    result = compare(model, data, out, methods=("gradcam", "scorecam"), layers=("layer4",))
    result.rows          # one dict per (method, layer, subset, metric): mean, ci_low, ci_high, n
    result.sanity        # method -> the randomisation cascade's Spearman curve and its verdict

Each (method, layer) explains the `limit` most confident mistakes (maps of the predicted class:
what drove the mistake) and as many correctly classified images (a seeded sample, maps of their
class); the random and centre baselines are scored on the same images with the same targets, so
every score has a reference. The sanity check (Adebayo et al. 2018) runs per method at the last
layer on a few mistakes. A (method, layer) the method cannot explain (CAM needs the layer
feeding GAP -> fc) is left out and listed in `skipped`. A layer "layer3+layer4" is one engine
on both layers, scored as its one combined map (RefineCAM's product, other methods' mean).
Everything is checked before any scoring and written only at the end: compare.csv,
compare.json (what the report reads), compare.png (the table) and sanity.png. A progress bar
counts the map sets scored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from camlens.atomic import atomic_write_files
from camlens.cam import METHODS, CamConfig, create
from camlens.classifier import adapt_user_input, own_layer_names
from camlens.compare.figures import sanity_figure, table_figure
from camlens.compare.table import COLUMNS, beats_baselines, csv_bytes, metric_rows, select_subsets
from camlens.data import Dataset
from camlens.distributed import all_sum, is_writer, rank, world_size
from camlens.evaluate import as_float_images, predict
from camlens.explain import ExplainError, check_explainable
from camlens.metrics import (
    BASELINES,
    HIGHER_IS_BETTER,
    METRICS,
    MetricConfig,
    baseline_engine,
    baseline_maps,
    cascade_order,
    sanity_check,
    sanity_verdict,
    score_maps,
)
from camlens.plots import figure_png

__all__ = ["FILES", "CompareResult", "compare"]

FILES = ("compare.csv", "compare.json", "compare.png", "sanity.png")


@dataclass(frozen=True)
class CompareResult:
    """What `compare` measured and where it wrote it."""

    rows: list[dict]  # the table, COLUMNS per row; baselines have method "random" / "centre"
    skipped: dict[tuple[str, str], str]  # (method, layer) a method cannot explain -> why
    sanity: dict[str, dict]  # method -> layer, steps, spearman (mean per step), passed, final
    files: dict[str, Path]  # name -> out/name for each of FILES


def compare(
    model: nn.Module,
    data: Dataset,
    out: str | Path,
    *,
    methods: Sequence[str] = tuple(METHODS),
    layers: Sequence[str] = ("layer3", "layer4"),
    limit: int = 256,
    top_k: int | None = 32,
    sanity_images: int = 16,
    cam_batch_size: int = 64,
    eval_batch_size: int = 256,
    seed: int = 0,
    metric_config: MetricConfig | None = None,
    progress: bool = True,
) -> CompareResult:
    """Score every (method, layer) and both baselines on `data.test`; write FILES into `out`.

    `top_k`: Score-CAM keeps each image's k highest-variance channels (Faster Score-CAM), as
    full Score-CAM costs ~2 s per image per layer on a laptop CPU; None: all channels.
    `data`: a camlens `Dataset` or the user's own test data as it is (see adapt_user_input).
    """
    model, data = adapt_user_input(model, data)  # a DataLoader, arrays: a Dataset, once
    layers = own_layer_names(model, layers)  # a wrapped model's own layer names work too
    # "layer3+layer4": one engine on both layers, scored as one map (the layers' mean, or
    # RefineCAM's product)
    check_explainable(model, methods, list(dict.fromkeys(p for la in layers for p in _parts(la))))
    if limit < 1:
        raise ExplainError(f"--limit must be >= 1, got {limit}: the images scored per subset")
    if sanity_images < 1:
        raise ExplainError(f"sanity_images must be >= 1, got {sanity_images}")
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
    # CAM needs the layer that feeds GAP -> fc: one image finds such pairs before any scoring
    probe = as_float_images(data.test.images[:1]).to(device)
    pairs, skipped = [], {}
    for method in methods:
        for layer in layers:
            try:
                with create(method, model, _parts(layer), cam_config.for_method(method)) as engine:
                    engine(probe, logits[:1].argmax(1).to(device))
                pairs.append((method, layer))
            except ValueError as e:
                skipped[(method, layer)] = str(e)
    if not pairs:
        raise ExplainError(f"no method can explain these layers: {next(iter(skipped.values()))}")
    sanity_layer = layers[-1]
    sanity_methods = [m for m in methods if (m, sanity_layer) in pairs]
    cfg = metric_config or MetricConfig(seed=seed)
    # the work is a list of tasks, one per (subset, method, layer) and baseline; under torchrun
    # each rank scores every world-th task and the tables are summed over the ranks. Each task
    # seeds its own generators, so every score equals the one a single process computes.
    tasks = [
        (subset, method, layer)
        for subset in subsets
        for method, layer in pairs + [(kind, "-") for kind in BASELINES]
    ]
    values = torch.zeros(len(tasks), len(METRICS), 4, dtype=torch.float64)  # mean, lo, hi, n
    mine = range(rank(), len(tasks), world_size())
    sanity_mine = sanity_methods[rank() :: world_size()]
    bar = tqdm(
        total=len(mine) + len(sanity_mine), desc="compare", unit="map set", disable=not progress
    )
    for i in mine:
        subset, method, layer = tasks[i]
        bar.set_postfix_str(f"{subset}: {method} {layer}")
        idx = subsets[subset]
        images = as_float_images(data.test.images[idx]).to(device)  # (n, 3, H, W)
        targets = logits[idx].argmax(1).to(device)  # the predicted class; the label when correct
        if method in BASELINES:  # one map per image whatever the layer: scored once, layer "-"
            g = torch.Generator(device).manual_seed(seed)
            cams = baseline_maps(images.shape, method, g, device)
            engine = baseline_engine(method, torch.Generator(device).manual_seed(seed + 1))
            scores = score_maps(model, images, cams, targets, engine=engine, config=cfg)
        else:
            with create(method, model, _parts(layer), cam_config.for_method(method)) as engine:
                cams = engine(images, targets).detach()  # (n, H, W)
                scores = score_maps(model, images, cams, targets, engine=engine, config=cfg)
        for j, row in enumerate(metric_rows(method, layer, subset, scores.values, seed)):
            values[i, j] = torch.tensor(
                [row["mean"], row["ci_low"], row["ci_high"], row["n"]], dtype=torch.float64
            )
        bar.update()
    all_sum(values)  # each task's row filled by exactly one rank, zeros elsewhere
    rows = [
        dict(zip(COLUMNS, (method, layer, subset, metric, *_cells(values[i, j])), strict=True))
        for i, (subset, method, layer) in enumerate(tasks)
        for j, metric in enumerate(METRICS)
    ]
    sanity, sanity_maps = _sanity(
        model,
        data,
        subsets["mistakes"],
        logits,
        sanity_methods,
        sanity_layer,
        sanity_images,
        cam_config,
        seed,
        device,
        bar,
    )
    bar.close()
    if not is_writer():
        return CompareResult(rows, skipped, sanity, {})
    files = {name: out / name for name in FILES}
    payload = {
        "columns": list(COLUMNS),
        "rows": rows,
        "sanity": sanity,
        "higher_is_better": {m: HIGHER_IS_BETTER[m] for m in METRICS},
        "beats_baselines": [list(k) for k, win in beats_baselines(rows).items() if win],
        "settings": {
            "limit": limit,
            "top_k": top_k,
            "seed": seed,
            "methods": list(methods),
            "layers": list(layers),
            "images": {k: int(v.numel()) for k, v in subsets.items()},
            "skipped": {f"{m} {lay}": why for (m, lay), why in skipped.items()},
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_files(
        {
            files["compare.csv"]: csv_bytes(rows),
            files["compare.json"]: (json.dumps(payload, indent=1) + "\n").encode(),
            files["compare.png"]: figure_png(table_figure(rows)),
            files["sanity.png"]: figure_png(sanity_figure(sanity, sanity_maps)),
        }
    )
    return CompareResult(rows, skipped, sanity, files)


def _sanity(model, data, mistakes, logits, methods, layer, count, cam_config, seed, device, bar):
    """Each method's cascade; under torchrun each rank runs every world-th method and the
    curves and first-image maps are summed over the ranks, as the score table is."""
    idx = mistakes[:count]
    images = as_float_images(data.test.images[idx]).to(device)
    targets = logits[idx].argmax(1).to(device)
    steps = len(cascade_order(model))
    h, w = images.shape[-2:]
    curves = torch.zeros(len(methods), 4, steps, dtype=torch.float64)  # spearman, std, ssim, pass
    maps = torch.zeros(len(methods), steps + 1, h, w)
    for i in range(rank(), len(methods), world_size()):
        method = methods[i]
        bar.set_postfix_str(f"sanity: {method} {layer}")
        result = sanity_check(
            model,
            images,
            targets,
            lambda m, method=method: create(
                method, m, _parts(layer), cam_config.for_method(method)
            ),
            generator=torch.Generator(device).manual_seed(seed),
            keep=1,
        )
        curves[i, 0] = result.spearman.mean(1).double().cpu()
        curves[i, 1] = result.spearman.std(1, unbiased=False).double().cpu()
        curves[i, 2] = result.ssim.mean(1).double().cpu()
        curves[i, 3] = float(sanity_verdict(result).passed)
        maps[i] = result.maps[:, 0].cpu()  # (S + 1, H, W) of the first image
        bar.update()
    all_sum(curves)
    all_sum(maps)
    names = cascade_order(model)
    sanity = {
        method: {
            "layer": layer,
            "steps": names,
            "spearman": [float(v) for v in curves[i, 0]],
            "spearman_std": [float(v) for v in curves[i, 1]],
            "ssim": [float(v) for v in curves[i, 2]],
            "passed": bool(curves[i, 3, 0] > 0.5),
            "final_spearman": float(curves[i, 0, -1]),
        }
        for i, method in enumerate(methods)
    }
    return sanity, {method: maps[i] for i, method in enumerate(methods)}


def _cells(v: torch.Tensor) -> tuple:
    """(mean, ci_low, ci_high, n) of a row as the plain numbers a single process writes."""
    return float(v[0]), float(v[1]), float(v[2]), int(v[3])


def _parts(layer: str) -> list[str]:
    """The layers of one compared entry: "layer3+layer4" is one engine on both."""
    return layer.split("+")
