"""What a compare will cost, said before it starts: forwards counted, the forward timed.

Scoring costs a fixed number of forwards per image and map set (`score_forwards`); a method's
map costs what it took on the probe images, in forwards of the same model (`probe`, which also
finds the (method, layer) pairs a method cannot explain); the forward itself is timed at a
batch near the one scoring uses. `estimate` says it in numbers and one paragraph; the progress
bar counts the same forwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from camlens.cam import eval_mode
from camlens.compare.job import CompareJob, closed
from camlens.distributed import all_sum, world_size
from camlens.evaluate import as_float_images
from camlens.explain import ExplainError
from camlens.metrics import MetricConfig, cascade_order

__all__ = [
    "Budget",
    "Probe",
    "budget",
    "duration",
    "estimate",
    "forward_seconds",
    "probe",
    "score_forwards",
]

# a compare's unit of work: (subset, method or baseline kind, layer)
Task = tuple[str, str, str]


@dataclass(frozen=True)
class Probe:
    """What one call of each (method, layer) on a few images told."""

    pairs: list[tuple[str, str]]  # the (method, layer) pairs that explain, in plan order
    skipped: dict[tuple[str, str], str]  # those that cannot -> why
    map_cost: dict[tuple[str, str], float]  # forward equivalents per image of each pair's map
    resolutions: dict[str, tuple[int, int]]  # layer -> its maps' native (h, w), the random map's
    forward_s: float  # seconds of one forward per image


@dataclass(frozen=True)
class Budget:
    """The compare's work as tasks, what each costs in forwards, and the estimate."""

    tasks: list[Task]  # one per (subset, method, layer) and baseline
    cost: dict[Task, float]  # forwards of each task
    sanity_methods: list[str]  # checked at `sanity_layer`
    sanity_layer: str
    sanity_count: int  # mistakes the sanity checks run on
    sanity_cost: dict[str, float]  # forwards of each method's sanity checks
    estimate: dict  # `estimate`'s numbers and paragraph


def forward_seconds(model: nn.Module, images: torch.Tensor) -> float:
    """Seconds of one forward per image, measured on `images` after a warm-up call."""
    with torch.no_grad(), eval_mode(model):
        model(images)
        start = time.perf_counter()
        model(images)
        return max((time.perf_counter() - start) / images.shape[0], 1e-7)


def score_forwards(cfg: MetricConfig) -> float:
    """Forwards per image that `score_maps` spends on every metric (ARCC's re-run aside)."""
    road = set(cfg.road_fractions) | set(cfg.arcc_fractions)
    curves = 2 * cfg.steps - 1 + (1 if cfg.replacement == "rise" else 0)
    return 1 + curves + 1 + 2 * len(road)  # the image, deletion + insertion, drop, ROAD


def probe(job: CompareJob) -> Probe:
    """Time the forward, then run each (method, layer) once on a few images: its map's cost,
    its layer's resolution, and whether it can explain that layer at all (CAM needs the layer that
    feeds GAP -> fc). Under torchrun the ranks' timings are averaged, so they agree."""
    images = job.data.test.images
    x = as_float_images(images[: min(8, len(images))]).to(job.device)
    targets = job.logits[: x.shape[0]].argmax(1).to(job.device)
    # scoring runs metrics.batch_size images per forward; a small batch costs more per image,
    # so the forward is timed on up to 64 (the probe repeated): close to the real rate, cheap
    batch = min(64, job.metrics.batch_size)
    forward_s = forward_seconds(job.model, x.repeat(-(-batch // x.shape[0]), 1, 1, 1)[:batch])
    pairs, skipped, map_cost, resolutions = [], {}, {}, {}
    for method in job.plan.methods:
        for layer in job.plan.layers:
            try:
                with closed(job.engine(method, job.model, layer)) as engine:
                    start = time.perf_counter()
                    # an engine of camlens says its layers' resolutions; a caller's does not
                    explain = getattr(engine, "explain", None)
                    result = (explain or engine)(x, targets)
                    took = time.perf_counter() - start
            except ValueError as e:
                skipped[(method, layer)] = str(e)
                continue
            pairs.append((method, layer))
            # map cost in forward equivalents per image (at least the one forward it needs)
            map_cost[(method, layer)] = max(1.0, took / x.shape[0] / forward_s)
            if explain is not None:
                own = max(tuple(m.shape[-2:]) for m in result.low_res)
                # the layer's own: input-resolution methods (FullGrad) map at H x W
                resolutions[layer] = min(resolutions.get(layer, own), own)
    if not pairs:
        raise ExplainError(f"no method can explain these layers: {next(iter(skipped.values()))}")
    timed = all_sum(torch.tensor([forward_s, *(map_cost[p] for p in pairs)], dtype=torch.float64))
    forward_s, *costs = (timed / world_size()).tolist()
    return Probe(pairs, skipped, dict(zip(pairs, costs, strict=True)), resolutions, forward_s)


def budget(job: CompareJob, found: Probe) -> Budget:
    """The tasks (each scored by one rank under torchrun), their costs and the estimate."""
    scored_layers = list(dict.fromkeys(layer for _, layer in found.pairs))
    reference = [
        (kind, layer)
        for kind in job.config.baselines
        for layer in (scored_layers if kind == "random" else ["-"])
    ]
    tasks = [(s, m, la) for s in job.subsets for m, la in found.pairs + reference]
    per_image = score_forwards(job.metrics)
    cost = {
        task: job.subsets[task[0]].numel()
        * (per_image + 2 * found.map_cost.get((task[1], task[2]), 0.0))  # the map, ARCC's re-run
        for task in tasks
    }
    layer = job.plan.layers[-1]
    methods = [m for m in job.plan.methods if (m, layer) in found.pairs]
    count = min(job.config.sanity_images, job.subsets["mistakes"].numel())
    steps = len(cascade_order(job.model))
    sanity_cost = {m: count * (steps + 3) * found.map_cost[(m, layer)] for m in methods}
    return Budget(
        tasks,
        cost,
        methods,
        layer,
        count,
        sanity_cost,
        estimate(job, found, reference, cost, sanity_cost, count),
    )


def estimate(job, found, reference, cost, sanity_cost, sanity_count) -> dict:
    """What compare will score and what it should cost, as numbers and one paragraph.

    `forwards` counts the whole job's; under torchrun the time is that of the rank with the
    most forwards, as the ranks work side by side (each scores every world-th task and
    every world-th method's sanity checks)."""
    world, tasks, methods = world_size(), list(cost), list(sanity_cost)
    forwards = sum(cost.values()) + sum(sanity_cost.values())
    share = max(
        sum(cost[t] for t in tasks[r::world]) + sum(sanity_cost[m] for m in methods[r::world])
        for r in range(world)
    )
    seconds = share * found.forward_s
    ranks = f", {share:,.0f} on the busiest of {world} ranks," if world > 1 else ""
    scored = list(dict.fromkeys(m for m, _ in found.pairs))
    layers = list(dict.fromkeys(la for _, la in found.pairs))
    names = ", ".join(f"{k} {la}" if la != "-" else k for k, la in reference)
    summary = (
        f"compare: {len(scored)} methods ({', '.join(scored)}) at {', '.join(layers)}, "
        f"baselines {names}, on {job.subsets['mistakes'].numel()} mistakes and "
        f"{job.subsets['correct'].numel()} correct images; sanity checks of {len(methods)} "
        f"methods on {sanity_count} mistakes. About {forwards:,.0f} forwards in all{ranks} at "
        f"{found.forward_s * 1e3:.2f} ms per image: roughly {duration(seconds)} here"
    )
    return {
        "forwards": round(forwards),
        "forwards_per_rank": round(share),
        "ranks": world,
        "seconds_per_forward": found.forward_s,
        "seconds": round(seconds, 1),
        "summary": summary,
    }


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
