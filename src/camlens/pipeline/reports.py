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
from camlens.epochs import explain_over_epochs
from camlens.evaluate import Evaluation, evaluate, write_evaluation
from camlens.explain import ExplainPlan
from camlens.pipeline.galleries import Galleries, prepare_plan, write_galleries
from camlens.report import ReportConfig, RunFacts, compute_report, render_report
from camlens.report.markup import b64
from camlens.train.kept import kept_epochs

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
    over_epochs: dict | None = None,
    report_config: ReportConfig | None = None,
) -> Outcome:
    """The report of a trained classifier (camlens's or any other): evaluate it on `data.test`
    into out/eval, explain the plan's mistakes (its filter, sort and limit) into
    out/gallery/<method>/ for each method, [compare them], and write out/report.html (pair
    statistics use all mistakes; their maps come from the same explain stream as the gallery's).

    `data`: a camlens `Dataset`, or the user's own test data as it is (a DataLoader or torch
    Dataset yielding (image, label), `(images, labels)` arrays; to name its classes or its
    normalisation, `from_user_data(data, classes=, mean=, std=)`): see `adapt_user_input`.
    `plan` None: `ExplainPlan()`; its `layers` None: the last layer before the global pooling.
    `plan.compare_limit`: also `compare` the methods and layers on that many of the gallery's
    mistakes (on the gallery's maps) and as many correct images into out/compare.*, and give
    the report "Can these maps be trusted?".
    `run_info`: facts the report's summary shows as given; None: the data's description.
    `history`: the training's metrics.jsonl rows (the curves); `over_epochs`: what
    `epochs_section` read, for "Maps across training".
    """
    started, out = time.perf_counter(), Path(out)
    model, data = adapt_user_input(model, data)
    run_info = {"data": data.source} if run_info is None else run_info
    plan = prepare_plan(model, plan or ExplainPlan(), data.image_size)  # once per job
    evaluation = evaluate(model, data.test, plan.eval_batch_size)
    facts = {k: str(run_info[k]) for k in ("checkpoint", "model", "data") if k in run_info}
    write_evaluation(evaluation, data.classes, out / "eval", facts)
    config = report_config or ReportConfig()
    galleries = write_galleries(
        model, data, out, plan, mistakes=evaluation.mistakes, config=config.gallery,
        counterfactual_config=config.counterfactual_config, checked=True,
    )  # fmt: skip
    explained = (galleries.mistakes, galleries.explanations)
    trust = None
    if plan.compare_limit is not None:
        # the gallery's mistakes on the gallery's maps: the verdict is about what is shown
        compared = compare(model, data, out, plan, explained=explained)
        trust = json.loads(compared.files["compare.json"].read_text())
    report = compute_report(
        model,
        data.test,
        data.classes,
        plan,
        explained=explained,
        evaluation=evaluation,
        facts=RunFacts(run_info, history, trust, over_epochs),
        config=config,
    )
    path = render_report(report, out)
    return Outcome(evaluation, galleries, path, time.perf_counter() - started)


# `camlens report` and the notebooks' older name: the same job, the same function
report = explain_model


def epochs_section(run: Path, data: Dataset, plan: ExplainPlan) -> dict | None:
    """`explain_over_epochs` of a run that kept epochs (into run/over-epochs.*), read back for
    the report; None when it kept none. Its strips show one method: the plan's first, named
    in the section's title, at the last layer, on its own 16 mistakes."""
    if not kept_epochs(run):
        return None
    first = replace(plan, methods=plan.methods[:1], limit=None)
    _, files = explain_over_epochs(run, data, run, first)
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
