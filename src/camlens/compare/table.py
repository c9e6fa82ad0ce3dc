"""The compare table: which images are scored, one row per (method, layer, subset, metric), wins.

Rows are plain dicts with COLUMNS, so the csv, the json the report reads and the figure share
them. A baseline's row has its name as method: "centre" (layer "-"), "random" at the layer whose
grid it was drawn at. Paired rows add `vs` (the baseline: "random layer4", "centre"), `diff`
(mean per-image method - baseline), `diff_low`, `diff_high` (its 95% bootstrap-t interval),
`p_holm` (Holm-adjusted over every paired row of the compare) and `decision` ("better",
"worse" or "indistinguishable" in the metric's direction at the family-wise alpha). A cell on
fewer than PAIRED_MIN_IMAGES images is not tested: its interval and `p_holm` are empty (None)
and its decision is TOO_FEW ("too few images").
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

import torch
from torch import Tensor

from camlens.evaluate import find_mistakes
from camlens.explain import select_mistakes
from camlens.metrics import (
    BASELINE_KINDS,
    HIGHER_IS_BETTER,
    METRICS,
    PAIRED_MIN_IMAGES,
    TOO_FEW,
    bootstrap_ci,
    holm,
    paired_bootstrap,
    paired_decision,
)

__all__ = [
    "COLUMNS",
    "FAITHFUL",
    "PAIRED",
    "PLAIN",
    "SUBSETS",
    "beats_baselines",
    "csv_bytes",
    "indistinguishable_from",
    "metric_rows",
    "paired_cells",
    "paired_rows",
    "select_subsets",
]

PLAIN = ("method", "layer", "subset", "metric", "mean", "ci_low", "ci_high", "n")
PAIRED = ("vs", "diff", "diff_low", "diff_high", "p_holm", "decision")
COLUMNS = PLAIN + PAIRED  # a plain row leaves the paired cells empty
SUBSETS = ("mistakes", "correct")


def select_subsets(logits: Tensor, labels: Tensor, limit: int, seed: int = 0) -> dict[str, Tensor]:
    """Indices of the `limit` most confident mistakes and of as many correct images (seeded)."""
    # the mistakes as every step chooses them (the gallery's default sort)
    mistakes = select_mistakes(find_mistakes(logits, labels), (), limit=limit).indices
    right = (logits.argmax(1) == labels).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(right.numel(), generator=g, device="cpu").to(right.device)
    correct = right[order][: mistakes.numel()]
    return {"mistakes": mistakes, "correct": correct}


def metric_rows(
    method: str, layer: str, subset: str, values: dict[str, Tensor], seed: int
) -> list[dict]:
    """One row per metric: its mean and 95% bootstrap interval over the images (NaN left out)."""
    rows = []
    for metric in METRICS:
        v = values[metric]
        mean, low, high = bootstrap_ci(v, generator=torch.Generator().manual_seed(seed))
        n = int((~torch.isnan(v)).sum())
        cells = (method, layer, subset, metric, mean, low, high, n)
        rows.append(dict(zip(PLAIN, cells, strict=True)))
    return rows


def csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue().encode()


def beats_baselines(rows: list[dict]) -> dict[tuple[str, str, str, str], bool]:
    """(method, layer, subset, metric) -> whether the paired test says it is better than every
    baseline it was compared with (Holm-corrected): a cell that ties a baseline is not a win.

    Reads the paired rows (those with a `vs`); cells without any are not wins.
    """
    decisions: dict[tuple[str, str, str, str], list[str]] = {}
    for r in rows:
        if r.get("vs"):
            key = (r["method"], r["layer"], r["subset"], r["metric"])
            decisions.setdefault(key, []).append(r["decision"])
    keys = {
        (r["method"], r["layer"], r["subset"], r["metric"])
        for r in rows
        if not r.get("vs") and r["method"] not in BASELINE_KINDS
    }
    return {k: bool(decisions.get(k)) and all(d == "better" for d in decisions[k]) for k in keys}


def indistinguishable_from(rows: list[dict], baseline: str = "centre") -> list[str]:
    """One sentence per (method, layer, subset) that the paired test cannot tell apart from
    `baseline` on any of deletion, insertion and ROAD."""
    found: dict[tuple[str, str, str], dict[str, list[str]]] = {}
    for r in rows:
        if r.get("vs") == baseline and r["metric"] in FAITHFUL:
            cell = found.setdefault((r["method"], r["layer"], r["subset"]), {})
            cell.setdefault(r["metric"], []).append(r["decision"])
    return [
        f"{method} {layer} ({subset}) cannot be told apart from the {baseline} map on "
        f"{', '.join(FAITHFUL)}"
        for (method, layer, subset), by_metric in found.items()
        if set(by_metric) == set(FAITHFUL)
        and all(d == "indistinguishable" for ds in by_metric.values() for d in ds)
    ]


# the metrics that ranked maps as the known evidence does (tests/test_trust.py); Average Drop
# and Increase reward maps that cover more, and ARCC mixes in coherency and complexity
FAITHFUL = ("deletion", "insertion", "road")


def paired_rows(rows, per_task, subsets, pairs, reference, alpha, seed) -> list[dict]:
    """Every (method, layer, subset, metric) against each baseline on the same images."""
    families = {}  # subset -> (cells, per-image differences): one Holm family across subsets
    for subset in subsets:
        cells, diffs = [], []
        for method, layer in pairs:
            for kind, base_layer in reference:
                if kind == "random" and base_layer != layer:
                    continue
                mine, base = per_task[(subset, method, layer)], per_task[(subset, kind, base_layer)]
                for j, metric in enumerate(METRICS):
                    cells.append((method, layer, metric, kind))
                    diffs.append(mine[j] - base[j])  # (n,)
        if cells:
            families[subset] = (cells, diffs)
    return paired_cells(rows, families, alpha, seed, HIGHER_IS_BETTER)


def paired_cells(
    rows: list[dict],
    families: dict[str, tuple[list[tuple], list[Tensor]]],
    alpha: float,
    seed: int,
    higher: Mapping[str, bool],
) -> list[dict]:
    """The paired verdicts of compare's table and of the grid test, one rule for both.

    `families`: subset -> (cells (method, layer, metric, baseline kind), each cell's (n,)
    per-image (per-grid) differences against its baseline, NaN where a metric is undefined).
    `rows`: the plain rows, whose means each paired row carries. A cell on fewer than
    PAIRED_MIN_IMAGES values is not tested (no interval, no p, not counted in the Holm family
    of the cells that are); the others: bootstrap-t interval, Holm over every tested cell of
    every subset, the decision by `higher[metric]` (is a higher value better).
    """
    mean_of = {(r["method"], r["layer"], r["subset"], r["metric"]): r for r in rows}
    tested = {
        subset: (~torch.isnan(torch.stack(diffs))).sum(1) >= PAIRED_MIN_IMAGES
        for subset, (_, diffs) in families.items()
    }  # subset -> (cells,) bool
    total = sum(int(t.sum()) for t in tested.values())
    out, p_all = [], []
    for subset, (cells, diffs) in families.items():
        stacked = torch.stack(diffs)  # (cells, n)
        known = ~torch.isnan(stacked)
        diff = torch.where(known, stacked, 0.0).sum(1) / known.sum(1).clamp_min(1)
        result = None
        if bool(tested[subset].any()):
            # one generator per subset: every row of a subset is resampled with the same
            # draws; enough resamples that a p-value can pass Holm's first threshold over
            # every tested cell
            result = paired_bootstrap(
                stacked[tested[subset]],
                generator=torch.Generator().manual_seed(seed),
                threshold=alpha / total,
            )
        k = 0  # the cell's row in `result`
        for c, (method, layer, metric, kind) in enumerate(cells):
            plain = mean_of[(method, layer, subset, metric)]
            row = {**plain, "vs": kind, "diff": float(diff[c]) if known[c].any() else _NAN}
            if tested[subset][c]:
                row.update(diff_low=float(result.low[k]), diff_high=float(result.high[k]))
                p_all.append(float(result.p[k]))
                k += 1
            else:
                row.update(diff_low=None, diff_high=None, p_holm=None, decision=TOO_FEW)
            out.append(row)
    # the p-values as numbers on the CPU, whatever device the differences were on
    p_cpu = torch.tensor(p_all, dtype=torch.float64, device="cpu")
    adjusted = holm(p_cpu) if p_all else p_cpu
    judged = [row for row in out if row.get("decision") != TOO_FEW]
    for row, p in zip(judged, adjusted.tolist(), strict=True):
        row["p_holm"] = p
        row["decision"] = paired_decision(row["diff"], p, higher[row["metric"]], alpha)
    return out


_NAN = float("nan")
