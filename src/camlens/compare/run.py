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
Everything is checked before any scoring. Before scoring, compare says what it will score and
how long that should take, from the model's forward cost and each method's map cost measured on
a few images (`budget`); the progress bar counts forwards. The files are written as each step
ends, so a failure in a late step loses nothing measured before it: compare.csv, compare.json
(what the report reads) and compare.png (the table) after the scoring, again with the sanity
states (and sanity.png) and with the grid test. An error inside the sanity or grid step is
said in one line (compare.json "errors", the summary) and the rest still runs.
Inside a report (`explained`: the explain stream's mistakes and maps), compare scores the
gallery's first mistakes on the maps the gallery shows, not maps made again with its own knobs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from camlens.atomic import atomic_write_files
from camlens.cam import KNOBS
from camlens.choices import COMPARE_LIMIT, COMPARE_METHODS, DEFAULT_LAYERS
from camlens.classifier import adapt_user_input, own_layer_names
from camlens.compare.budget import Budget, budget, probe
from camlens.compare.figures import sanity_figure, table_figure
from camlens.compare.grid import grid_test
from camlens.compare.job import (
    CompareConfig,
    CompareJob,
    EngineMaker,
    Explained,
    closed,
    shown_maps,
)
from camlens.compare.sanity import run_sanity
from camlens.compare.scoring import score_tasks
from camlens.compare.summary import headline, sanity_lines
from camlens.compare.table import (
    COLUMNS,
    FAITHFUL,
    beats_baselines,
    csv_bytes,
    indistinguishable_from,
    paired_rows,
    select_subsets,
)
from camlens.distributed import is_writer
from camlens.evaluate import predict
from camlens.explain import ExplainError, ExplainPlan
from camlens.metrics import (
    BASELINE_KINDS,
    HIGHER_IS_BETTER,
    METRICS,
    VERDICTS,
    MetricConfig,
    deletion_variant,
)
from camlens.metrics.grid import grid_maps
from camlens.plots import figure_png

__all__ = [
    "COMPARE_LIMIT",
    "COMPARE_METHODS",
    "COMPARE_PLAN",
    "FILES",
    "CompareConfig",
    "CompareResult",
    "EngineMaker",
    "compare",
]

FILES = ("compare.csv", "compare.json", "compare.png", "sanity.png")
# what `compare` scores when given no plan: the methods that fit the budget at layer3 and layer4
COMPARE_PLAN = ExplainPlan(
    methods=COMPARE_METHODS, layers=DEFAULT_LAYERS, compare_limit=COMPARE_LIMIT
)
# the channels each image keeps in Score-CAM and its variants unless told (Faster Score-CAM):
# all of them would not fit compare's budget on 2 CPU cores
COMPARE_TOP_K = 32


def with_top_k(plan: ExplainPlan, top_k: int | None, unset_only: bool = False) -> ExplainPlan:
    """`plan` with `top_k` (None: every channel) for each of its methods that reads it (the
    Score-CAM family: ScoreKnobs and its variants), their other knobs kept; `unset_only`: only
    for those it gives no knobs. ExplainError when none reads it, unless `unset_only`."""
    readers = [m for m in plan.methods if hasattr(KNOBS.get(m), "top_k")]
    if not readers and not unset_only:
        every = ", ".join(m for m, k in KNOBS.items() if hasattr(k, "top_k"))
        raise ExplainError(f"top_k is read only by {every}, and none is among the methods")
    own = {k.method: k for k in plan.knobs}
    new = {m: replace(own[m], top_k=top_k) if m in own else KNOBS[m](top_k=top_k) for m in readers}
    if unset_only:
        new = {m: k for m, k in new.items() if m not in own}
    kept = tuple(k for k in plan.knobs if k.method not in new)
    return replace(plan, knobs=kept + tuple(new.values()))


# why the metrics that do not lead are shown last (compare.json "shown_last")
SHOWN_LAST = {
    "drop": "rewards maps that cover more: the exact evidence map drops more than "
    "Grad-CAM on the known-evidence set",
    "increase": "the same masking as drop, counted as a yes/no per image",
    "arcc": "mixes faithfulness with coherency and complexity",
}


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
    config: CompareConfig | None = None,
    *,
    engines: Mapping[str, EngineMaker] | None = None,
    announce: Callable[[str], None] | None = None,
    explained: Explained | None = None,
) -> CompareResult:
    """Score every (method, layer) of `plan` and the baselines on `data.test`; write FILES.

    `plan` (default `COMPARE_PLAN`): the methods and layers compared, `compare_limit` mistakes
    (and as many correct images; None: 32, what fits minutes on 2 CPU cores), the batch sizes
    (`eval_batch_size` for every inference and scoring forward), precision, `seed`, the
    methods' `knobs` (a Score-CAM method given none keeps COMPARE_TOP_K channels, Faster
    Score-CAM, as full Score-CAM costs ~2 s per image per layer on a laptop CPU), `progress`.
    `config`: the sanity checks' images, the baselines, alpha, the grid test, the metrics'
    knobs (`CompareConfig`; None: its defaults).
    `engines`: methods of your own by name, `(model, layers) -> engine`, an engine being any
    `(images, targets) -> (N, H, W)` maps in [0, 1] (with `close()` if it holds hooks); name
    them in `plan.methods` beside METHODS names. A fixed or random "method" gets the same
    table and sanity verdict as a real one, so this is also how the checks are tested.
    `announce` receives the estimate before scoring (default: the progress bar's stream when
    `progress`, else nothing). `data`: a camlens `Dataset` or the user's own test data as it
    is (see adapt_user_input). `explained`: a report's explain stream, `(mistakes, method ->
    Explanations)`: its first `compare_limit` mistakes are the ones scored, on its maps.
    """
    job = _job(model, data, plan, config, engines or {}, explained)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExplainError(f"--out {out} is a file: name a folder")
    found = probe(job)
    work = budget(job, found)
    say = announce or (
        (lambda line: tqdm.write(line)) if job.plan.progress else (lambda line: None)
    )
    if is_writer():
        say(work.estimate["summary"])
    total = sum(work.cost.values()) + sum(work.sanity_cost.values())
    bar = tqdm(total=round(total), desc="compare", unit="forward", disable=not job.plan.progress)
    result = {"found": found, "work": work, "errors": {}, "sanity": {}, "maps": {}, "grid": {}}
    result["rows"], per_task = score_tasks(job, found, work, bar)
    result["paired"] = paired_rows(
        result["rows"],
        per_task,
        job.subsets,
        found.pairs,
        _reference(work),
        job.config.alpha,
        job.plan.metric_seed,
    )
    files = _write(job, out, result, ("compare.csv", "compare.json", "compare.png"))
    result["sanity"], result["maps"] = _step(
        result, "sanity", lambda: run_sanity(job, work, bar), ({}, {})
    )
    files |= _write(job, out, result, ("compare.json", "sanity.png"))
    if job.config.grid is not None:
        bar.set_postfix_str("grid test")
        result["grid"] = _step(result, "grid test", lambda: _grid(job, found), {})
        files |= _write(job, out, result, ("compare.json",))
    bar.close()
    return CompareResult(
        result["rows"],
        found.skipped,
        result["sanity"],
        files,
        result["paired"],
        work.estimate,
        _summary(job, result),
        result["grid"],
    )


def _job(model, data, plan, config, engines, explained) -> CompareJob:
    """The job, checked before any work: the data adapted once, the layers and methods
    resolved, the model's predictions, the scored images and their targets."""
    model, data = adapt_user_input(model, data)  # a DataLoader, arrays: a Dataset, once
    plan = plan or COMPARE_PLAN
    # Score-CAM on all channels would not fit the budget; in a report, the gallery's knobs
    if explained is None:
        plan = with_top_k(plan, COMPARE_TOP_K, unset_only=True)
    limit = COMPARE_LIMIT if plan.compare_limit is None else plan.compare_limit
    # a wrapped model's own layer names work too
    layers = tuple(own_layer_names(model, plan.layers or COMPARE_PLAN.layers))
    plan = replace(plan, layers=layers, compare_limit=limit)
    taken = [name for name in engines if name in BASELINE_KINDS]
    if taken:  # its rows would be read as the baseline's
        raise ExplainError(
            f"engines= names a baseline ({', '.join(taken)}): call your method something else"
        )
    # the plan's own methods are checked (a report's job checked its plan already); the
    # caller's own engines are theirs
    named = [m for m in plan.methods if m not in engines]
    if explained is None:
        replace(plan, methods=tuple(named) or ("gradcam",)).check(model)
    logits = predict(model, data.test.images, plan.eval_batch_size).cpu()
    if logits.shape[1] != len(data.classes):
        raise ExplainError(
            f"the model has {logits.shape[1]} classes but the data {len(data.classes)}: "
            "pass the data it was trained on"
        )
    subsets = select_subsets(logits, data.test.labels, limit, plan.metric_seed)
    # the predicted class; the label when correct
    targets = {name: logits[idx].argmax(1) for name, idx in subsets.items()}
    shown = {}
    if explained is not None:  # the gallery's first mistakes, the classes its maps explain
        subsets["mistakes"] = explained[0].indices[:limit]
        targets["mistakes"] = explained[0].preds[:limit]
        shown = shown_maps(explained, limit)
    if subsets["mistakes"].numel() == 0:
        raise ExplainError("the model makes no mistakes on this test split: nothing to compare")
    config = config or CompareConfig()
    metrics = config.metrics or MetricConfig(seed=plan.metric_seed, batch_size=plan.eval_batch_size)
    return CompareJob(model, data, plan, config, metrics, logits, subsets, targets, engines, shown)


def _reference(work: Budget) -> list[tuple[str, str]]:
    """The baselines' (kind, layer) pairs, in the tasks' order."""
    return list(dict.fromkeys((m, la) for _, m, la in work.tasks if m in BASELINE_KINDS))


def _step(result: dict, name: str, run: Callable[[], Any], empty: Any) -> Any:
    """A late step run so that its failure costs only its own result (`empty` in its place):
    said in one line (compare.json "errors" and the summary), the steps after it still run."""
    try:
        return run()
    except Exception as e:  # noqa: BLE001 - any failure of one step, said, not raised
        result["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return empty


def _grid(job: CompareJob, found) -> dict:
    """The grid localisation test of every scored (method, layer); every rank runs the same
    seeded test (cheap beside the scoring), so each has its line."""

    def maps_of(method: str, layer: str, grids):
        with closed(job.engine(method, job.model, layer)) as engine:
            return grid_maps(engine, grids)

    return grid_test(
        job.model,
        job.data.test,
        job.logits,
        found.pairs,
        maps_of,
        job.config.grid,
        job.config.alpha,
        job.plan.eval_batch_size,
    )


def _summary(job: CompareJob, result: dict) -> list[str]:
    """The grid test's line, each step's error, each method's sanity state, the headline."""
    grid = [result["grid"]["line"]] if result["grid"] else []
    errors = [f"{step} failed: {why}" for step, why in result["errors"].items()]
    said = headline(result["rows"] + result["paired"], job.config.alpha)
    return grid + errors + sanity_lines(result["sanity"]) + said


def _write(job: CompareJob, out: Path, result: dict, names: tuple[str, ...]) -> dict[str, Path]:
    """Write `names` of FILES (rank 0 only) from what is measured so far; atomic each."""
    if not is_writer():
        return {}
    rows, paired = result["rows"], result["paired"]
    make = {
        "compare.csv": lambda: csv_bytes(rows + paired),
        "compare.json": lambda: (json.dumps(_payload(job, result), indent=1) + "\n").encode(),
        "compare.png": lambda: figure_png(table_figure(rows + paired)),
        "sanity.png": lambda: figure_png(sanity_figure(result["sanity"], result["maps"])),
    }
    if "sanity.png" in names and not result["sanity"]:
        names = tuple(n for n in names if n != "sanity.png")
    out.mkdir(parents=True, exist_ok=True)
    files = {out / name: make[name]() for name in names}
    atomic_write_files(files)
    return {path.name: path for path in files}


def _payload(job: CompareJob, result: dict) -> dict:
    """compare.json: the table, the paired cells, the verdicts and the settings, so far."""
    rows, paired, found, work = result["rows"], result["paired"], result["found"], result["work"]
    alpha = job.config.alpha
    return {
        "columns": list(COLUMNS),
        "rows": rows,
        "paired": paired,
        "sanity": result["sanity"],
        "verdicts": VERDICTS,
        "higher_is_better": {m: HIGHER_IS_BETTER[m] for m in METRICS},
        "beats_baselines": [list(k) for k, win in beats_baselines(rows + paired).items() if win],
        "indistinguishable_from_centre": indistinguishable_from(paired, "centre"),
        "summary": _summary(job, result),  # the grid test's line, states, then `headline`
        "grid": result["grid"],  # the grid localisation test; {}: not run (yet)
        "errors": result["errors"],  # step -> what went wrong in it, in one line
        "headline": headline(rows + paired, alpha),  # the paired verdicts in words
        # the metrics that rank maps as known evidence does lead; the others last, with why
        "lead_metrics": list(FAITHFUL),
        "shown_last": SHOWN_LAST,
        "settings": _settings(job, found, work, len(paired)),
    }


def _settings(job: CompareJob, found, work: Budget, n_paired: int) -> dict:
    plan, alpha = job.plan, job.config.alpha
    sizes = ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in found.resolutions.items())
    return {
        "limit": plan.compare_limit,
        "top_k": {k.method: k.top_k for k in plan.knobs if hasattr(k, "top_k")},
        "seed": plan.metric_seed,
        "methods": list(plan.methods),
        "layers": list(plan.layers),
        "images": {k: int(v.numel()) for k, v in job.subsets.items()},
        "maps of the mistakes": "the report's gallery" if job.shown else "compare's engines",
        "skipped": {f"{m} {lay}": why for (m, lay), why in found.skipped.items()},
        "baselines": {
            "random": "uniform values at the layer's resolution, upsampled and min-max "
            "normalised as a CAM: " + sizes,
            "centre": "a centred Gaussian, sigma a quarter of the shorter side",
            "random-pixel": "each pixel uniform, i.i.d.",
        },
        "deletion": deletion_variant(job.metrics),
        "paired": f"per-image differences, bootstrap-t (images resampled jointly per "
        f"subset), Holm over all {n_paired} paired cells at alpha {alpha}",
        "alpha": alpha,
        "estimate": work.estimate,
    }
