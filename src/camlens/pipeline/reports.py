"""The report step: evaluate, explain the mistakes, [compare], write report.html.

report(model, data, out, ...) -> Outcome      any trained classifier, from evaluation on
explain_model(model, data, out, ...) -> Outcome   the maps, galleries and report.html
describe_run(meta, **facts), report_facts(opened)  what the report's summary says
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from camlens.classifier import Opened
from camlens.compare import compare
from camlens.data import Dataset
from camlens.epochs import explain_over_epochs, kept_epochs
from camlens.evaluate import Evaluation, evaluate, write_evaluation
from camlens.explain import ExplainError, check_explainable
from camlens.pipeline.galleries import LAYERS, Galleries, choose_layers, write_galleries
from camlens.report import ReportConfig, compute_report, render_report

__all__ = [
    "Outcome",
    "check_compare_limit",
    "describe_run",
    "epochs_section",
    "explain_model",
    "report",
    "report_facts",
]


@dataclass(frozen=True)
class Outcome:
    """What `explain_model` (and so `run` and `demo`) measured and wrote."""

    evaluation: Evaluation  # on the whole test split
    galleries: Galleries
    report: Path  # out/report.html
    seconds: float  # wall time of the whole call (training and loading included)


def explain_model(
    model: nn.Module,
    data: Dataset,
    out: str | Path,
    *,
    run_info: dict,
    history: list[dict] | None = None,
    methods: Sequence[str] = ("gradcam",),
    layers: Sequence[str] = LAYERS,
    limit: int | None = None,
    cam_batch_size: int = 64,
    eval_batch_size: int = 64,
    precision: str = "fp32",
    evaluation: Evaluation | None = None,
    report_config: ReportConfig | None = None,
    compare_limit: int | None = None,
    progress: bool = False,
    over_epochs: dict | None = None,
) -> Outcome:
    """Evaluate `model` on `data.test`, explain its `limit` most confident mistakes, write
    out/gallery/<method>/ for each method and out/report.html (pair statistics use all mistakes).

    `evaluation` saves a pass when the caller has one of this model on this split.
    `compare_limit`: also `compare` the methods and layers on that many mistakes (and as many
    correct images) into out/compare.*, and give the report its "Can these maps be trusted?".
    `progress`: bars for the gallery's maps, cards and pages, with counts.
    `over_epochs`: what `epochs_section` read, for the report's "Maps across training".
    """
    started = time.perf_counter()
    check_explainable(model, methods, layers, precision)
    check_compare_limit(compare_limit)
    if evaluation is None:
        evaluation = evaluate(model, data.test, eval_batch_size)
    galleries = write_galleries(
        model,
        data,
        out,
        mistakes=evaluation.mistakes,
        limit=limit,
        methods=methods,
        layers=layers,
        cam_batch_size=cam_batch_size,
        precision=precision,
        progress=progress,
    )
    trust = None
    if compare_limit is not None:
        compared = compare(
            model,
            data,
            out,
            methods=methods,
            layers=layers,
            limit=compare_limit,
            cam_batch_size=cam_batch_size,
            eval_batch_size=eval_batch_size,
        )
        trust = json.loads(compared.files["compare.json"].read_text())
    report = compute_report(
        model,
        data.test,
        data.classes,
        run_info=run_info,
        history=history,
        methods=methods,
        layers=layers,
        batch_size=cam_batch_size,
        evaluation=evaluation,
        config=report_config,
        precision=precision,
        explained=(galleries.mistakes, galleries.explanations),
        trust=trust,
        over_epochs=over_epochs,
    )
    path = render_report(report, out)
    return Outcome(evaluation, galleries, path, time.perf_counter() - started)


def report(
    model: nn.Module,
    data: Dataset,
    out: str | Path,
    *,
    run_info: dict,
    history: list[dict] | None = None,
    methods: Sequence[str] = ("gradcam",),
    layers: Sequence[str] | None = None,
    limit: int | None = None,
    cam_batch_size: int = 64,
    eval_batch_size: int = 64,
    precision: str = "fp32",
    compare_limit: int | None = None,
    progress: bool = False,
    over_epochs: dict | None = None,
) -> Outcome:
    """The report of a trained classifier (camlens's or any other taking [0, 1] images):
    evaluate it on `data.test` into out/eval, then `explain_model` its mistakes into
    out/gallery/<method>/ and out/report.html.

    `layers` None: the last layer before the global pooling. `limit`, `compare_limit`,
    `progress`, `over_epochs`: see `explain_model`.
    """
    started, out = time.perf_counter(), Path(out)
    layers = choose_layers(model, layers, data.image_size)
    check_explainable(model, methods, layers, precision)
    check_compare_limit(compare_limit)
    evaluation = evaluate(model, data.test, eval_batch_size)
    facts = {k: str(run_info[k]) for k in ("checkpoint", "model", "data") if k in run_info}
    write_evaluation(evaluation, data.classes, out / "eval", facts)
    outcome = explain_model(
        model,
        data,
        out,
        run_info=run_info,
        history=history,
        methods=methods,
        layers=layers,
        limit=limit,
        cam_batch_size=cam_batch_size,
        eval_batch_size=eval_batch_size,
        precision=precision,
        evaluation=evaluation,
        compare_limit=compare_limit,
        progress=progress,
        over_epochs=over_epochs,
    )
    return replace(outcome, seconds=time.perf_counter() - started)


def epochs_section(
    run: Path, data: Dataset, methods: Sequence[str], layers: Sequence[str] | None
) -> dict | None:
    """`explain_over_epochs` of a run that kept epochs (into run/over-epochs.*), read back for
    the report; None when it kept none."""
    if not kept_epochs(run):
        return None
    layer = layers[-1] if layers else "layer4"
    _, files = explain_over_epochs(run, data, run, method=methods[0], layer=layer)
    section = json.loads(files["over-epochs.json"].read_text())
    section["png"] = base64.b64encode(files["over-epochs.png"].read_bytes()).decode("ascii")
    return section


def check_compare_limit(limit: int | None) -> None:
    """Refuse a `--compare 0` before any work rather than after training."""
    if limit is not None and limit < 1:
        raise ExplainError(f"--compare must be >= 1, got {limit}: the images scored per subset")


def describe_run(meta: dict, **facts: str) -> dict:
    """What the report's summary says of a checkpoint: `facts`, then how it was trained."""
    r = meta.get("recipe", {})
    keys = ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "precision")
    return {
        **facts,
        "epochs": meta["epoch"],
        "trained on": meta["device"],
        "train_seconds": meta["train_seconds"],
        "recipe": ", ".join(f"{k} {r[k]}" for k in keys if k in r),
    }


def report_facts(opened: Opened) -> dict:
    """What the report's summary says of a model `open_model` opened, and of its data."""
    data = opened.data
    facts = {**opened.facts, "data": data.source, "data_label": data.label}
    return describe_run(opened.meta, **facts) if opened.meta else facts
