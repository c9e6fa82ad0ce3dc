"""compare's scoring step: every task's maps scored on its images, the table's rows.

Each task (subset, method or baseline, layer) seeds its own generators, so under torchrun each
rank scores every world-th task and the tables, summed over the ranks, equal one process's.
A (method, layer) whose maps of the mistakes the explain stream already made (`job.shown`, a
report's gallery) is scored on those maps; its engine is still built for ARCC's re-runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camlens.compare.budget import Budget, Probe
from camlens.compare.job import CompareJob, closed
from camlens.compare.table import PLAIN, metric_rows
from camlens.distributed import all_sum, rank, world_size
from camlens.metrics import BASELINE_KINDS, METRICS, baseline_engine, baseline_maps, score_maps

__all__ = ["score_tasks"]


def score_tasks(job: CompareJob, found: Probe, plan: Budget, bar) -> tuple[list[dict], dict]:
    """The table's plain rows, and per task its (metrics, n) per-image values (NaN: undefined)."""
    tasks, seed = plan.tasks, job.plan.metric_seed
    n_max = max(int(v.numel()) for v in job.subsets.values())
    values = torch.zeros(len(tasks), len(METRICS), 4, dtype=torch.float64)  # mean, lo, hi, n
    per_image = torch.zeros(len(tasks), len(METRICS), n_max, dtype=torch.float64)
    undefined = torch.zeros_like(per_image)  # 1 where a per-image value is NaN (ARCC)
    for i in range(rank(), len(tasks), world_size()):
        subset, method, layer = tasks[i]
        bar.set_postfix_str(f"{subset}: {method} {layer}")
        scores = _score(job, found, subset, method, layer)
        for j, row in enumerate(metric_rows(method, layer, subset, scores, seed)):
            values[i, j] = torch.tensor(
                [row["mean"], row["ci_low"], row["ci_high"], row["n"]], dtype=torch.float64
            )
            v = scores[METRICS[j]].detach().double().cpu()  # (n,)
            undefined[i, j, : v.numel()] = torch.isnan(v).double()
            per_image[i, j, : v.numel()] = torch.nan_to_num(v, nan=0.0)
        bar.update(round(plan.cost[tasks[i]]))
    for t in (values, per_image, undefined):  # each task filled by exactly one rank
        all_sum(t)
    rows = [
        dict(zip(PLAIN, (method, layer, subset, metric, *_cells(values[i, j])), strict=True))
        for i, (subset, method, layer) in enumerate(tasks)
        for j, metric in enumerate(METRICS)
    ]
    per_task = {
        task: torch.where(undefined[i] > 0, torch.nan, per_image[i])[
            :, : job.subsets[task[0]].numel()
        ]
        for i, task in enumerate(tasks)
    }
    return rows, per_task


def _score(job: CompareJob, found: Probe, subset: str, method: str, layer: str) -> dict:
    """One task's per-image scores, metric -> (n,)."""
    images = job.images(subset)  # (n, 3, H, W)
    targets = job.targets[subset].to(job.device)
    device, seed = job.device, job.plan.metric_seed
    if method in BASELINE_KINDS:  # one map per image; "random" at its layer's resolution
        # drawn on the CPU and moved, so a GPU's table is the same draw as a CPU's
        own = found.resolutions.get(layer)
        maps = baseline_maps(images.shape, method, torch.Generator().manual_seed(seed), device, own)
        engine = baseline_engine(method, torch.Generator().manual_seed(seed + 1), own)
        scores = score_maps(job.model, images, maps, targets, engine=engine, config=job.metrics)
        return scores.values
    with closed(job.engine(method, job.model, layer)) as engine:
        shown = job.shown.get((method, layer)) if subset == "mistakes" else None
        maps = engine(images, targets).detach() if shown is None else shown.to(device)
        scores = score_maps(job.model, images, maps, targets, engine=engine, config=job.metrics)
    return scores.values


def _cells(v: Tensor) -> tuple:
    """(mean, ci_low, ci_high, n) of a row as the plain numbers a single process writes."""
    return float(v[0]), float(v[1]), float(v[2]), int(v[3])
