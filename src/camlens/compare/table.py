"""The compare table: which images are scored, one row per (method, layer, subset, metric), wins.

Rows are plain dicts with COLUMNS, so the csv, the json the report reads and the figure share
them; a baseline's row has method "random" or "centre" and layer "-".
"""

from __future__ import annotations

import csv
import io

import torch
from torch import Tensor

from camlens.metrics import BASELINES, HIGHER_IS_BETTER, METRICS, bootstrap_ci

__all__ = ["COLUMNS", "SUBSETS", "beats_baselines", "csv_bytes", "metric_rows", "select_subsets"]

COLUMNS = ("method", "layer", "subset", "metric", "mean", "ci_low", "ci_high", "n")
SUBSETS = ("mistakes", "correct")


def select_subsets(logits: Tensor, labels: Tensor, limit: int, seed: int = 0) -> dict[str, Tensor]:
    """Indices of the `limit` most confident mistakes and of as many correct images (seeded)."""
    probs = logits.float().softmax(1)  # (N, K)
    conf, preds = probs.max(1)  # (N,) each
    wrong = (preds != labels).nonzero().squeeze(1)
    mistakes = wrong[conf[wrong].argsort(descending=True, stable=True)][:limit]
    right = (preds == labels).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    correct = right[torch.randperm(right.numel(), generator=g)][: mistakes.numel()]
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
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue().encode()


def beats_baselines(rows: list[dict]) -> dict[tuple[str, str, str, str], bool]:
    """(method, layer, subset, metric) -> whether its interval lies beyond both baselines' means
    in the metric's direction: a cell that merely ties a random map is not a win."""
    base = {
        (r["subset"], r["metric"], r["method"]): r["mean"] for r in rows if r["method"] in BASELINES
    }
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
