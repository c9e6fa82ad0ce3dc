"""The report step: evaluate, explain the mistakes, [compare], write report.html.

report(model, data, out, plan, ...) -> Outcome      any trained classifier, from evaluation on
explain_model(model, data, out, plan, ...) -> Outcome   the maps, galleries and report.html
describe_run(meta, **facts), report_facts(opened)  what the report's summary says
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from camlens.classifier import Opened, adapt_user_input
from camlens.compare import compare
from camlens.data import Dataset
from camlens.epochs import explain_over_epochs, kept_epochs
from camlens.evaluate import Evaluation, evaluate, write_evaluation
from camlens.explain import ExplainPlan
from camlens.pipeline.galleries import Galleries, prepare_plan, write_galleries
from camlens.report import ReportConfig, compute_report, render_report
from camlens.report.markup import b64

__all__ = [
    "Outcome",
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
    data: Any,
    out: str | Path,
    plan: ExplainPlan | None = None,
    *,
    run_info: dict | None = None,
    history: list[dict] | None = None,
    evaluation: Evaluation | None = None,
    report_config: ReportConfig | None = None,
    over_epochs: dict | None = None,
    checked: bool = False,
) -> Outcome:
    """Evaluate `model` on `data.test`, explain the plan's mistakes (its limit, most confident
    first), write out/gallery/<method>/ for each method and out/report.html (pair statistics
    use all mistakes; their maps come from the same explain step as the gallery's).

    `data`: a camlens `Dataset`, or the user's own test data as it is (a DataLoader or torch
    Dataset yielding (image, label), `(images, labels)` arrays; to name its classes or its
    normalisation, `from_user_data(data, classes=, mean=, std=)`): see `adapt_user_input`.
    `run_info`: facts the report's summary shows as given; None: the data's description.

    `evaluation` saves a pass when the caller has one of this model on this split.
    `plan.compare_limit`: also `compare` the methods and layers on that many mistakes (and as
    many correct images) into out/compare.*, and give the report "Can these maps be trusted?".
    `over_epochs`: what `epochs_section` read, for the report's "Maps across training".
    `checked`: the caller ran `prepare_plan` (the plan is checked once per job).
    """
    started = time.perf_counter()
    model, data = adapt_user_input(model, data)
    run_info = {"data": data.source} if run_info is None else run_info
    plan = plan if checked else prepare_plan(model, plan or ExplainPlan(), data.image_size)
    if evaluation is None:
        evaluation = evaluate(model, data.test, plan.eval_batch_size)
    galleries = write_galleries(model, data, out, plan, mistakes=evaluation.mistakes, checked=True)
    trust = None
    if plan.compare_limit is not None:
        compared = compare(model, data, out, plan)
        trust = json.loads(compared.files["compare.json"].read_text())
    report = compute_report(
        model,
        data.test,
        data.classes,
        plan,
        explained=(galleries.mistakes, galleries.explanations),
        evaluation=evaluation,
        run_info=run_info,
        history=history,
        config=report_config,
        trust=trust,
        over_epochs=over_epochs,
        cap=plan.limit,  # the page states the cap that chose the cards
    )
    path = render_report(report, out)
    return Outcome(evaluation, galleries, path, time.perf_counter() - started)


def report(
    model: nn.Module,
    data: Any,
    out: str | Path,
    plan: ExplainPlan | None = None,
    *,
    run_info: dict | None = None,
    history: list[dict] | None = None,
    over_epochs: dict | None = None,
) -> Outcome:
    """The report of a trained classifier (camlens's or any other taking [0, 1] images):
    evaluate it on `data.test` into out/eval, then `explain_model` its mistakes into
    out/gallery/<method>/ and out/report.html.

    `plan` None: `ExplainPlan()`; its `layers` None: the last layer before the global pooling.
    `data`, `run_info` and `over_epochs`: see `explain_model`.
    """
    started, out = time.perf_counter(), Path(out)
    model, data = adapt_user_input(model, data)
    run_info = {"data": data.source} if run_info is None else run_info
    plan = prepare_plan(model, plan or ExplainPlan(), data.image_size)
    evaluation = evaluate(model, data.test, plan.eval_batch_size)
    facts = {k: str(run_info[k]) for k in ("checkpoint", "model", "data") if k in run_info}
    write_evaluation(evaluation, data.classes, out / "eval", facts)
    outcome = explain_model(
        model,
        data,
        out,
        plan,
        run_info=run_info,
        history=history,
        evaluation=evaluation,
        over_epochs=over_epochs,
        checked=True,
    )
    return replace(outcome, seconds=time.perf_counter() - started)


def epochs_section(run: Path, data: Dataset, plan: ExplainPlan) -> dict | None:
    """`explain_over_epochs` of a run that kept epochs (into run/over-epochs.*), read back for
    the report (the plan's first method and last layer, its own 16 mistakes); None when it
    kept none."""
    if not kept_epochs(run):
        return None
    _, files = explain_over_epochs(run, data, run, replace(plan, limit=None))
    section = json.loads(files["over-epochs.json"].read_text())
    section["png"] = b64(files["over-epochs.png"].read_bytes())
    return section


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
