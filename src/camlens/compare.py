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
compare.json (what the report reads), compare.png (the table) and sanity.png.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from camlens.atomic import atomic_write_files
from camlens.cam import METHODS, CamConfig, create
from camlens.data import Dataset
from camlens.evaluate import as_float_images, predict
from camlens.explain import ExplainError, check_explainable
from camlens.metrics import (
    BASELINES,
    HIGHER_IS_BETTER,
    METRICS,
    MetricConfig,
    baseline_engine,
    baseline_maps,
    bootstrap_ci,
    sanity_check,
    sanity_verdict,
    score_maps,
)
from camlens.plots import figure_png

__all__ = [
    "COLUMNS",
    "SUBSETS",
    "CompareResult",
    "beats_baselines",
    "compare",
    "sanity_figure",
    "select_subsets",
    "table_figure",
]

COLUMNS = ("method", "layer", "subset", "metric", "mean", "ci_low", "ci_high", "n")
SUBSETS = ("mistakes", "correct")
FILES = ("compare.csv", "compare.json", "compare.png", "sanity.png")


@dataclass(frozen=True)
class CompareResult:
    """What `compare` measured and where it wrote it."""

    rows: list[dict]  # the table, COLUMNS per row; baselines have method "random" / "centre"
    skipped: dict[tuple[str, str], str]  # (method, layer) a method cannot explain -> why
    sanity: dict[str, dict]  # method -> layer, steps, spearman (mean per step), passed, final
    files: dict[str, Path]  # name -> out/name for each of FILES


def select_subsets(
    logits: Tensor, labels: Tensor, limit: int, seed: int = 0
) -> dict[str, Tensor]:
    """Indices of the `limit` most confident mistakes and of as many correct images (seeded)."""
    probs = logits.float().softmax(1)  # (N, K)
    conf, preds = probs.max(1)  # (N,) each
    wrong = (preds != labels).nonzero().squeeze(1)
    mistakes = wrong[conf[wrong].argsort(descending=True, stable=True)][:limit]
    right = (preds == labels).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    correct = right[torch.randperm(right.numel(), generator=g)][: mistakes.numel()]
    return {"mistakes": mistakes, "correct": correct}


def _rows(method: str, layer: str, subset: str, values: dict[str, Tensor], seed: int) -> list:
    rows = []
    for metric in METRICS:
        v = values[metric]
        mean, low, high = bootstrap_ci(v, generator=torch.Generator().manual_seed(seed))
        n = int((~torch.isnan(v)).sum())
        cells = (method, layer, subset, metric, mean, low, high, n)
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


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
) -> CompareResult:
    """Score every (method, layer) and both baselines on `data.test`; write FILES into `out`.

    `top_k`: Score-CAM keeps each image's k highest-variance channels (Faster Score-CAM), as
    full Score-CAM costs ~2 s per image per layer on a laptop CPU; None: all channels.
    """
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
                with create(method, model, _parts(layer), cam_config) as engine:
                    engine(probe, logits[:1].argmax(1).to(device))
                pairs.append((method, layer))
            except ValueError as e:
                skipped[(method, layer)] = str(e)
    if not pairs:
        raise ExplainError(f"no method can explain these layers: {next(iter(skipped.values()))}")
    sanity_layer = layers[-1]
    sanity_methods = [m for m in methods if (m, sanity_layer) in pairs]
    cfg = metric_config or MetricConfig(seed=seed)
    rows: list[dict] = []
    for subset, idx in subsets.items():
        images = as_float_images(data.test.images[idx]).to(device)  # (n, 3, H, W)
        targets = logits[idx].argmax(1).to(device)  # the predicted class; the label when correct
        for method, layer in pairs:
            with create(method, model, _parts(layer), cam_config) as engine:
                cams = engine(images, targets).detach()  # (n, H, W)
                scores = score_maps(model, images, cams, targets, engine=engine, config=cfg)
            rows += _rows(method, layer, subset, scores.values, seed)
        for kind in BASELINES:  # one map per image whatever the layer: scored once, layer "-"
            g = torch.Generator(device).manual_seed(seed)
            cams = baseline_maps(images.shape, kind, g, device)
            engine = baseline_engine(kind, torch.Generator(device).manual_seed(seed + 1))
            scores = score_maps(model, images, cams, targets, engine=engine, config=cfg)
            rows += _rows(kind, "-", subset, scores.values, seed)
    sanity, sanity_maps = _sanity(model, data, subsets["mistakes"], logits, sanity_methods,
                                  sanity_layer, sanity_images, cam_config, seed, device)
    files = {name: out / name for name in FILES}
    payload = {
        "columns": list(COLUMNS),
        "rows": rows,
        "sanity": sanity,
        "higher_is_better": {m: HIGHER_IS_BETTER[m] for m in METRICS},
        "beats_baselines": [list(k) for k, win in beats_baselines(rows).items() if win],
        "settings": {"limit": limit, "top_k": top_k, "seed": seed, "methods": list(methods),
                     "layers": list(layers), "images": {k: int(v.numel())
                                                        for k, v in subsets.items()},
                     "skipped": {f"{m} {lay}": why for (m, lay), why in skipped.items()}},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_files({
        files["compare.csv"]: _csv_bytes(rows),
        files["compare.json"]: (json.dumps(payload, indent=1) + "\n").encode(),
        files["compare.png"]: figure_png(table_figure(rows)),
        files["sanity.png"]: figure_png(sanity_figure(sanity, sanity_maps)),
    })
    return CompareResult(rows, skipped, sanity, files)


def _sanity(model, data, mistakes, logits, methods, layer, count, cam_config, seed, device):
    idx = mistakes[:count]
    images = as_float_images(data.test.images[idx]).to(device)
    targets = logits[idx].argmax(1).to(device)
    sanity, maps = {}, {}
    for method in methods:
        result = sanity_check(
            model,
            images,
            targets,
            lambda m, method=method: create(method, m, _parts(layer), cam_config),
            generator=torch.Generator(device).manual_seed(seed),
            keep=1,
        )
        verdict = sanity_verdict(result)
        sanity[method] = {
            "layer": layer,
            "steps": list(result.steps),
            "spearman": [float(v) for v in result.spearman.mean(1)],
            "spearman_std": [float(v) for v in result.spearman.std(1, unbiased=False)],
            "ssim": [float(v) for v in result.ssim.mean(1)],
            "passed": verdict.passed,
            "final_spearman": verdict.final_spearman,
        }
        maps[method] = result.maps[:, 0].cpu()  # (S + 1, H, W) of the first image
    return sanity, maps


def _parts(layer: str) -> list[str]:
    """The layers of one compared entry: "layer3+layer4" is one engine on both."""
    return layer.split("+")


def _csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue().encode()


def beats_baselines(rows: list[dict]) -> dict[tuple[str, str, str, str], bool]:
    """(method, layer, subset, metric) -> whether its interval lies beyond both baselines' means
    in the metric's direction: a cell that merely ties a random map is not a win."""
    base = {(r["subset"], r["metric"], r["method"]): r["mean"] for r in rows
            if r["method"] in BASELINES}
    wins = {}
    for r in rows:
        if r["method"] in BASELINES:
            continue
        refs = [base[(r["subset"], r["metric"], b)] for b in BASELINES]
        if HIGHER_IS_BETTER[r["metric"]]:
            win = all(r["ci_low"] > ref for ref in refs)
        else:
            win = all(r["ci_high"] < ref for ref in refs)
        wins[(r["method"], r["layer"], r["subset"], r["metric"])] = win
    return wins


def table_figure(rows: list[dict]) -> Figure:
    """Per subset a table: (method, layer) rows and the baselines below, metrics as columns."""
    keys = list(dict.fromkeys((r["method"], r["layer"]) for r in rows))
    keys = [k for k in keys if k[0] not in BASELINES] + [k for k in keys if k[0] in BASELINES]
    cell = {(r["method"], r["layer"], r["subset"], r["metric"]): r for r in rows}
    wins = beats_baselines(rows)
    subsets = [s for s in SUBSETS if any(r["subset"] == s for r in rows)]
    fig = Figure(figsize=(1.5 * len(METRICS) + 1.5, (0.32 * len(keys) + 0.9) * len(subsets)))
    for i, subset in enumerate(subsets):
        ax = fig.add_subplot(len(subsets), 1, i + 1)
        ax.axis("off")
        text, colours = [], []
        for method, layer in keys:
            line, col = [], []
            for metric in METRICS:
                r = cell[(method, layer, subset, metric)]
                line.append(f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
                if method in BASELINES:
                    col.append("#e0e0e0")
                else:
                    col.append("#b7e4b0" if wins[(method, layer, subset, metric)] else "#f6c6c0")
            text.append(line)
            colours.append(col)
        arrows = [f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in METRICS]
        labels = [f"{m} {lay}" if m not in BASELINES else f"[baseline] {m}" for m, lay in keys]
        table = ax.table(cellText=text, cellColours=colours, rowLabels=labels,
                         colLabels=arrows, loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.scale(1, 1.2)
        n = next(r["n"] for r in rows if r["subset"] == subset)
        ax.set_title(f"{subset} ({n} images): mean [95% CI]; green = interval beyond both "
                     "baselines in the arrow's direction", fontsize=8)
    return fig


def sanity_figure(sanity: dict[str, dict], maps: dict[str, Tensor]) -> Figure:
    """Adebayo fig. 2: one image's map per method through the cascade; the mean Spearman curve."""
    methods = list(sanity)
    steps = len(next(iter(maps.values())))
    fig = Figure(figsize=(0.8 * steps + 5, 0.8 * len(methods) + 1))
    grid = fig.add_gridspec(len(methods), steps + 6)
    for i, method in enumerate(methods):
        for j in range(steps):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(maps[method][j].numpy(), cmap="jet", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(method, fontsize=7, rotation=0, ha="right", va="center")
            if i == 0:
                name = "original" if j == 0 else sanity[method]["steps"][j - 1]
                ax.set_title(name, fontsize=6, rotation=45, ha="left")
    ax = fig.add_subplot(grid[:, steps + 1:])
    for method in methods:
        s = sanity[method]
        verdict = "passes" if s["passed"] else "FAILS"
        ax.plot(range(1, len(s["spearman"]) + 1), s["spearman"], marker="o", ms=3,
                label=f"{method} ({verdict})")
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    first = sanity[methods[0]]
    ax.set_xticks(range(1, len(first["steps"]) + 1))
    ax.set_xticklabels(first["steps"], rotation=60, fontsize=6)
    ax.set_ylim(-0.2, 1.05)
    ax.set_ylabel(f"mean Spearman with the original map ({first['layer']})", fontsize=7)
    ax.set_title("cascading randomisation, output to input", fontsize=8)
    ax.legend(fontsize=6)
    return fig
