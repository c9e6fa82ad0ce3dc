"""compare's grid localisation test: which method and layer finds the class on real images.

Every compared (method, layer) and the grid baselines (`camlens.metrics.grid`) are scored on
the same grids; each method is judged against the centre blob and the smooth random map of its
own layer on the per-grid differences, as compare judges its other cells (paired bootstrap-t,
grids resampled jointly, Holm over every paired grid cell, its own family). The result is a
plain dict, what compare.json "grid" carries, with the one line that leads compare's summary
and the report's trust section: the method and layer to believe, or that none beats chance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from camlens.compare.table import paired_cells
from camlens.data import Split
from camlens.metrics import (
    bootstrap_ci,
)
from camlens.metrics.grid import (
    GRID_BASELINES,
    GRID_METRICS,
    GridConfig,
    GridError,
    Grids,
    grid_baseline_maps,
    grid_scores,
    make_grids,
)

__all__ = ["MapsOf", "grid_line", "grid_test"]

# (method, layer, grids) -> the maps of every tile's class, as `grid_maps` returns them
MapsOf = Callable[[str, str, Grids], tuple[Tensor, Tensor]]
# what each of GRID_METRICS means, for compare.json and the report
MEANING = {
    "share": "positive map mass inside the class's tile over all positive mass, at the "
    "layer's native grid (tiles cut pixels by area)",
    "share_input": "the same on the min-max normalised map at the input's size",
    "pointing": "the native map's arg-max in the class's tile (tied maxima share the hit)",
}


def grid_test(
    model: nn.Module,
    split: Split,
    logits: Tensor,
    pairs: Sequence[tuple[str, str]],
    maps_of: MapsOf,
    config: GridConfig,
    alpha: float = 0.05,
    batch_size: int = 64,
) -> dict:
    """The grid test of every (method, layer) of `pairs` on a test `split` (its images and
    labels) with the model's `logits` (N, K): settings, rows, paired rows and `line`.
    `config.seed` draws the grids, the random baseline and the bootstrap's resamples.

    Too few images (GridError) is not an error of the compare: the dict then has `error` and
    a `line` that says so, no rows, and compare goes on.
    """
    images, labels, seed = split.images, split.labels, config.seed
    chance = 1 / config.n**2
    settings = {
        "n": config.n,
        "count": config.count,
        "confidence": config.confidence,
        "min_grids": config.min_grids,
        "seed": config.seed,
        "chance": chance,
        "metrics": MEANING,
    }
    try:
        grids = make_grids(model, images, labels, logits, config, batch_size)
    except GridError as e:
        return {"line": f"grid test: {e}", "error": str(e), "settings": settings}
    except Exception as e:  # a model that takes neither the grid nor its H x W resizing
        why = f"skipped: the model fails on the grid ({type(e).__name__}: {_first_line(e)})"
        return {"line": f"grid test: {why}", "error": why, "settings": settings}
    kept = grids.built - grids.dropped
    settings.update(
        path=grids.path,
        input=list(grids.images.shape[-2:]),
        built=grids.built,
        dropped=grids.dropped,
        kept=kept,
        confident=grids.confident,
        present=kept / grids.built,
        leakage=f"a grid is kept when the model's top {config.n**2} logits are its "
        f"{config.n**2} classes: {kept} of {grids.built} ({kept / grids.built:.1%}); "
        f"{grids.dropped} dropped",
        baselines="centre: the centred Gaussian; random: uniform at the layer's resolution, "
        "drawn afresh per tile; oracle: the tile mask itself; per layer at its own grid",
    )
    values: dict[tuple[str, str], dict[str, Tensor]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    refused: dict[tuple[str, str], str] = {}
    for method, layer in pairs:
        try:
            native, inputs = maps_of(method, layer, grids)
        except Exception as e:  # one method's refusal (a layout, a layer) spares the others
            refused[(method, layer)] = f"{type(e).__name__}: {_first_line(e)}"
            continue
        values[(method, layer)] = grid_scores(native, inputs, grids.n)
        sizes.setdefault(layer, tuple(native.shape[-2:]))
    pairs = [p for p in pairs if p not in refused]
    if not pairs:
        why = (
            "skipped: no method gave maps on the grids ("
            + "; ".join(f"{m} {la}: {e}" for (m, la), e in refused.items())
            + ")"
        )
        return {"line": f"grid test: {why}", "error": why, "settings": settings}
    if refused:
        settings["refused"] = {f"{m} {la}": e for (m, la), e in refused.items()}
    for layer, size in sizes.items():
        for kind in GRID_BASELINES[:2]:
            g = torch.Generator().manual_seed(seed)
            maps = grid_baseline_maps(kind, grids, size, g)
            values[(kind, layer)] = grid_scores(*maps, grids.n)
    coarse = min(sizes.values())  # the oracle at the coarsest grid: whole pixels where it can
    values[("oracle", "-")] = grid_scores(*grid_baseline_maps("oracle", grids, coarse), grids.n)
    rows = []
    for (method, layer), by_metric in values.items():
        for metric in GRID_METRICS:
            v = by_metric[metric]
            mean, low, high = bootstrap_ci(v, generator=torch.Generator().manual_seed(seed))
            rows.append(
                {"method": method, "layer": layer, "subset": "grid", "metric": metric}
                | {"mean": mean, "ci_low": low, "ci_high": high, "n": v.numel()}
            )
    settings["paired"] = (
        f"per-grid differences, bootstrap-t (grids resampled jointly), Holm over all "
        f"{len(pairs) * len(GRID_METRICS) * 2} paired grid cells at alpha {alpha:g}"
    )
    paired = _paired(rows, values, pairs, alpha, seed)
    result = {"settings": settings, "rows": rows, "paired": paired}
    return result | {"line": grid_line(result, alpha)}


def _first_line(e: BaseException) -> str:
    """An exception's message on one line (an AssertionError may have none)."""
    text = str(e).strip().splitlines()
    return text[0] if text else "no message"


def _paired(rows, values, pairs, alpha, seed) -> list[dict]:
    """Each (method, layer, metric) against the centre and random maps of its layer, per grid:
    compare's rule (`paired_cells`), a --grid-min-grids below it leaving no verdict."""
    cells, diffs = [], []
    for method, layer in pairs:
        for kind in GRID_BASELINES[:2]:
            for metric in GRID_METRICS:
                cells.append((method, layer, metric, kind))
                diffs.append(values[(method, layer)][metric] - values[(kind, layer)][metric])
    higher = dict.fromkeys(GRID_METRICS, True)  # a higher share, a hit: the map found the tile
    return paired_cells(rows, {"grid": (cells, diffs)}, alpha, seed, higher)


def grid_line(result: dict, alpha: float = 0.05) -> str:
    """The grid test in one line: the method and layer to believe (the highest share among
    those whose share beats both the centre and random maps), and those at chance."""
    if "error" in result:
        return f"grid test: {result['error']}"
    s = result["settings"]
    head = (
        f"grid test ({s['n']}x{s['n']} confident correct images, {s['path']} "
        f"{s['input'][0]}x{s['input'][1]} input, {s['kept']} of {s['built']} grids kept; "
        f"chance {s['chance']:.3f})"
    )
    decisions: dict[tuple[str, str], list[str]] = {}
    for r in result["paired"]:
        if r["metric"] == "share":
            decisions.setdefault((r["method"], r["layer"]), []).append(r["decision"])
    mean = {(r["method"], r["layer"], r["metric"]): r for r in result["rows"]}
    wins = [k for k, ds in decisions.items() if all(d == "better" for d in ds)]
    ties = [k for k, ds in decisions.items() if "indistinguishable" in ds and "better" not in ds]
    rule = f"paired, Holm-corrected at alpha {alpha:g}"
    if not wins:
        line = f"{head}: no method puts more of its map in its class's tile than the centre "
        line += f"and random maps ({rule})"
    else:
        best = max(wins, key=lambda k: mean[(*k, "share")]["mean"])
        share, point = mean[(*best, "share")], mean[(*best, "pointing")]
        line = (
            f"{head}: believe {best[0]} {best[1]}: {share['mean']:.3f} "
            f"[{share['ci_low']:.3f}, {share['ci_high']:.3f}] of its map in its class's tile, "
            f"pointing {point['mean']:.3f}, beats the centre and random maps ({rule})"
        )
    losses = [k for k, ds in decisions.items() if "worse" in ds]
    if ties:
        line += "; not told apart from chance: " + ", ".join(f"{m} {la}" for m, la in ties)
    if losses:
        line += "; worse than chance: " + ", ".join(f"{m} {la}" for m, la in losses)
    if s.get("refused"):
        line += "; skipped: " + ", ".join(f"{k} ({why})" for k, why in s["refused"].items())
    return line
