"""The whole job as library functions: what the `camlens` command and the notebook both call.

    run(config, data, out, ...) -> Outcome      train (resuming a killed run), then explain_model
    demo(out, ...) -> Outcome                   the shipped model on the bundled sample
    report_facts(opened) -> dict                what the report says of an open_model() model
    report(model, data, out, ...) -> Outcome    any trained classifier: evaluate into out/eval,
                                                then explain_model (run and demo end with it)
    choose_layers(model, layers, image_size)    --layer checked against the layers a map can
                                                be read from; None: the last before pooling
    explain_model(model, data, out, ...) -> Outcome
        evaluate -> explain the most confident mistakes -> a gallery per method
        [-> compare the methods' faithfulness] -> report.html
    write_galleries(model, data, out, ...) -> Galleries
        pick mistakes (filter, sort, limit) -> explain -> out/gallery/<method>/ per method
    load_matching_data(source, meta) -> Dataset  the data a checkpoint was trained on
    diff_checkpoints(a, b, data, out, ...) -> dict  two models side by side -> out/diff.html

The maps are computed once, by the explain step; the galleries and the report draw from them.
Errors a user can cause are raised as the package's own error types, with one-line messages.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from camlens.cam import candidate_layers, pick_layer
from camlens.classifier import Classifier, Opened
from camlens.compare import compare
from camlens.data import DataError, Dataset, load_dataset
from camlens.diff import diff_models, write_diff
from camlens.distributed import is_writer
from camlens.epochs import explain_over_epochs, kept_epochs
from camlens.evaluate import (
    Evaluation,
    Mistakes,
    evaluate,
    find_mistakes,
    predict,
    write_evaluation,
)
from camlens.explain import (
    ExplainError,
    Explanations,
    check_explainable,
    explain_chunks,
    select_mistakes,
)
from camlens.gallery import GalleryConfig, stream_gallery
from camlens.model import ResNet18, load_checkpoint
from camlens.plots import plot_confusion
from camlens.report import ReportConfig, compute_report, render_report
from camlens.train import TrainConfig, tensorboard_logger, train, wandb_logger

__all__ = [
    "Galleries",
    "Outcome",
    "choose_layers",
    "demo",
    "diff_checkpoints",
    "explain_model",
    "load_matching_data",
    "report",
    "report_facts",
    "run",
    "write_galleries",
]

LAYERS = ("layer3", "layer4")


@dataclass(frozen=True)
class Galleries:
    """What `write_galleries` explained and where it drew it."""

    mistakes: Mistakes  # the mistakes explained, with their images, in gallery order
    explanations: dict[str, Explanations]  # method -> maps of `mistakes` (native resolution)
    folders: dict[str, Path]  # method -> its gallery folder, out/gallery/<method>
    # method -> seconds of maps, drawing, encoding, writing (see camlens.gallery.Gallery)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What `explain_model` (and so `run` and `demo`) measured and wrote."""

    evaluation: Evaluation  # on the whole test split
    galleries: Galleries
    report: Path  # out/report.html
    seconds: float  # wall time of the whole call (training and loading included)


def load_matching_data(source: str | Path, meta: dict, *, progress: bool = True) -> Dataset:
    """The data a checkpoint is evaluated on must have the classes it was trained on."""
    data = load_dataset(source, image_size=int(meta["image_size"]), progress=progress)
    if list(data.classes) != list(meta["classes"]):
        raise DataError(
            f"{source} has classes {list(data.classes)}, but the checkpoint was trained on "
            f"{meta['classes']}: pass the data it was trained on"
        )
    return data


def write_galleries(
    model: nn.Module,
    data: Dataset,
    out: str | Path,
    *,
    mistakes: Mistakes | None = None,
    sort: str = "confidence",
    label_name: str | None = None,
    pred_name: str | None = None,
    limit: int | None = None,
    methods: Sequence[str] = ("gradcam",),
    layers: Sequence[str] = LAYERS,
    cam_batch_size: int = 64,
    eval_batch_size: int = 64,
    precision: str = "fp32",
    config: GalleryConfig | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Galleries:
    """Explain the chosen mistakes of `data.test` with each method; one gallery per method.

    `mistakes`: e.g. `read_mistakes(misclassified.csv, data.test)`, whose predictions may be
    TTA's; None: the model's arg-max mistakes. Nothing chosen: nothing is written.
    Streamed: maps are computed, drawn and written `chunk_size` mistakes at a time (default
    `cam_batch_size`), so memory does not grow with the number of mistakes; a killed call
    started again over the same `out` keeps the cards already written.
    """
    check_explainable(model, methods, layers, precision)
    if mistakes is None:
        logits = predict(model, data.test.images, eval_batch_size)
        mistakes = find_mistakes(logits, data.test.labels)
    if mistakes.images is None:
        mistakes = replace(mistakes, images=data.test.images[mistakes.indices])
    chosen = select_mistakes(mistakes, data.classes, sort, label_name, pred_name, limit)
    drawn = {}
    for method in methods if len(chosen) else ():
        chunks = explain_chunks(
            model, chosen, method, layers, cam_batch_size, precision, chunk_size
        )
        if not is_writer():  # under torchrun rank 0 alone draws; every rank explains its share
            for _ in chunks:
                pass
            continue
        drawn[method] = stream_gallery(
            chunks, chosen, method, data.classes, out, config, progress=progress
        )
    return Galleries(
        chosen,
        {k: g.explanations for k, g in drawn.items()},
        {k: g.folder for k, g in drawn.items()},
        {k: g.seconds for k, g in drawn.items()},
    )


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


def _run_info(meta: dict, **facts: str) -> dict:
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
    return _run_info(opened.meta, **facts) if opened.meta else facts


def run(
    config: TrainConfig,
    data: Dataset,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    methods: Sequence[str] = ("gradcam",),
    layers: Sequence[str] = LAYERS,
    limit: int | None = 1000,
    cam_batch_size: int = 64,
    progress: bool = True,
    tensorboard: bool = False,
    wandb_project: str | None = None,
    compare_limit: int | None = None,
) -> Outcome:
    """Train in `out` (continuing a killed run there), then evaluate into out/eval and
    `explain_model` the checkpoint. Maps are fp32; `config.precision` is the training's.

    `limit` keeps the gallery and the page small after a short run (thousands of mistakes).
    `compare_limit`: see `explain_model`. `wandb_project`: also log to Weights & Biases
    (OUT/wandb; offline without an API key): each epoch, then curves, confusion, cards, accuracy.
    """
    started, out = time.perf_counter(), Path(out)
    # fail before hours of training, not after: the layers are checked on an untrained twin
    check_explainable(ResNet18(len(data.classes), config.norm, config.width), methods, layers)
    check_compare_limit(compare_limit)
    loggers = [tensorboard_logger(out)] if tensorboard else []
    if wandb_project is not None:
        loggers.append(wandb_logger(out, wandb_project, dataclasses.asdict(config)))
    try:
        train(
            config,
            data,
            out,
            device=device,
            resume=True,  # continues the run in `out` when there is one, else starts it
            progress=progress,
            on_epoch=(lambda metrics: [log(metrics) for log in loggers]) if loggers else None,
        )
    except BaseException:  # a killed run closes its W&B run; the next call reopens the same one
        if wandb_project is not None:
            loggers[-1].finish()
        raise
    model, meta = load_checkpoint(out / "checkpoint.safetensors", device)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    run_info = _run_info(
        meta,
        checkpoint=str(out / "checkpoint.safetensors"),
        data=data.source,
        data_label=data.label,
    )
    outcome = report(
        model,
        data,
        out,
        run_info=run_info,
        history=history,
        methods=methods,
        layers=layers,
        limit=limit,
        cam_batch_size=cam_batch_size,
        eval_batch_size=config.eval_batch_size,
        compare_limit=compare_limit,
        progress=progress,
        over_epochs=epochs_section(out, data, methods, layers) if config.keep_every else None,
    )
    if wandb_project is not None:
        cards = [p for f in outcome.galleries.folders.values() for p in sorted(f.glob("*.png"))]
        loggers[-1].finish(
            accuracy=outcome.evaluation.accuracy,
            curves=out / "curves.png",
            confusion_png=plot_confusion(outcome.evaluation.confusion, data.classes),
            cards=cards[:16],
        )
    return replace(outcome, seconds=time.perf_counter() - started)


def demo(
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    methods: Sequence[str] = ("gradcam",),
    layers: Sequence[str] = LAYERS,
    cam_batch_size: int = 64,
    precision: str = "fp32",
) -> Outcome:
    """Offline: the shipped model's mistakes on the bundled 1,000-image sample, explained."""
    started = time.perf_counter()
    model, meta = load_checkpoint("shipped", device)
    data = load_dataset("sample", progress=False)
    run_info = _run_info(
        meta,
        checkpoint="shipped with camlens (camlens/assets/resnet18-cifar10-jpeg)",
        data="1,000-image sample of the test split (100 per class), bundled with camlens",
        data_label="CIFAR-10 (JPEG q75), 1,000-image test sample",
        **{
            "training images": meta["train_images"],
            "full test accuracy": f"{meta['evaluation']['test_acc']:.2%} (10,000 images)",
        },
    )
    outcome = report(
        model,
        data,
        out,
        run_info=run_info,
        history=meta.get("history"),
        methods=methods,
        layers=layers,
        cam_batch_size=cam_batch_size,
        precision=precision,
    )
    return replace(outcome, seconds=time.perf_counter() - started)


def diff_checkpoints(
    checkpoint_a: str | Path,
    checkpoint_b: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    names: tuple[str, str] | None = None,
    device: str | torch.device = "cpu",
    method: str = "gradcam",
    layers: Sequence[str] = LAYERS,
    limit: int = 24,
    cam_batch_size: int = 64,
    eval_batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Path]:
    """Two checkpoints on `source`'s test split, side by side: out/diff.html and out/diff.json.

    `names` default to each checkpoint's norm ("batch norm", "layer norm") when they differ,
    else to the checkpoints as given; `limit` cards per group in the page's galleries.
    """
    if limit < 1:
        raise ExplainError(f"--limit must be >= 1, got {limit}: the cards shown per group")
    model_a, meta_a = load_checkpoint(checkpoint_a, device)
    model_b, meta_b = load_checkpoint(checkpoint_b, device)
    if list(meta_a["classes"]) != list(meta_b["classes"]):
        raise DataError(
            f"{checkpoint_a} and {checkpoint_b} were trained on different classes: "
            "compare models of the same data"
        )
    data = load_matching_data(source, meta_a, progress=progress)
    for model in (model_a, model_b):
        check_explainable(model, [method], layers)
    if names is None:
        norms = (f"{meta_a['norm']} norm", f"{meta_b['norm']} norm")
        names = norms if norms[0] != norms[1] else (str(checkpoint_a), str(checkpoint_b))
    d = diff_models(
        model_a,
        model_b,
        data.test,
        data.classes,
        names=names,
        method=method,
        layers=layers,
        limit=limit,
        batch_size=eval_batch_size,
        cam_batch_size=cam_batch_size,
    )
    return write_diff(d, out)


def choose_layers(
    model: nn.Module, layers: Sequence[str] | None, image_size: int
) -> tuple[str, ...]:
    """`layers` checked against the layers a map can be read from (one forward of a dummy
    batch); None: the last of them before the global pooling (`camlens.cam.pick_layer`).
    In a `Classifier` the wrapped model's layers are `model.NAME`; NAME alone finds them."""
    if layers is None:
        try:
            return (pick_layer(model, image_size).name,)
        except ValueError as e:
            raise ExplainError(str(e)) from None
    names = dict(model.named_modules())
    if isinstance(model, Classifier):  # the model's own names work too: `layer4`, not only
        layers = [f"model.{n}" if n not in names and f"model.{n}" in names else n for n in layers]
    unknown = [layer for layer in layers if not layer or layer not in names]
    if unknown:
        listed = "; ".join(c.describe() for c in candidate_layers(model, image_size))
        arch = getattr(model, "arch", type(model).__name__)
        raise ExplainError(
            f"no layer named {unknown[0]!r} in {arch}; layers a map can be read "
            f"from (output without the batch): {listed}"
        )
    return tuple(layers)


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
