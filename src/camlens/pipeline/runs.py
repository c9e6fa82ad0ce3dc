"""The whole job from training, and the offline demo: both end with `report`."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from camlens.data import Dataset, load_dataset
from camlens.explain import ExplainPlan
from camlens.model import ResNet18, load_checkpoint
from camlens.pipeline.galleries import LAYERS
from camlens.pipeline.reports import Outcome, describe_run, epochs_section, report
from camlens.plots import plot_confusion
from camlens.train import TrainConfig, tensorboard_logger, train, wandb_logger

__all__ = ["demo", "run"]


def run(
    config: TrainConfig,
    data: Dataset,
    out: str | Path,
    plan: ExplainPlan | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    tensorboard: bool = False,
    wandb_project: str | None = None,
) -> Outcome:
    """Train in `out` (continuing a killed run there), then evaluate into out/eval and
    `explain_model` the checkpoint. Maps are fp32; `config.precision` is the training's.

    `plan` None: layer3 and layer4, at most 1,000 mistakes (a short run makes thousands: the
    gallery and the page stay small); see `explain_model`. `wandb_project`: also log to
    Weights & Biases (OUT/wandb; offline without an API key): each epoch, then curves,
    confusion, cards, accuracy.
    """
    started, out = time.perf_counter(), Path(out)
    # fail before hours of training, not after: the layers are checked on an untrained twin
    plan = plan or ExplainPlan(layers=LAYERS, limit=1000, progress=progress)
    plan.check(ResNet18(len(data.classes), config.norm, config.width))
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
    run_info = describe_run(
        meta,
        checkpoint=str(out / "checkpoint.safetensors"),
        data=data.source,
        data_label=data.label,
    )
    outcome = report(
        model,
        data,
        out,
        plan,
        run_info=run_info,
        history=history,
        over_epochs=epochs_section(out, data, plan) if config.keep_every else None,
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
    plan: ExplainPlan | None = None,
    *,
    device: str | torch.device = "cpu",
) -> Outcome:
    """Offline: the shipped model's mistakes on the bundled 1,000-image sample, explained
    (`plan` None: Grad-CAM at layer3 and layer4)."""
    started = time.perf_counter()
    model, meta = load_checkpoint("shipped", device)
    data = load_dataset("sample", progress=False)
    run_info = describe_run(
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
        plan or ExplainPlan(layers=LAYERS),
        run_info=run_info,
        history=meta.get("history"),
    )
    return replace(outcome, seconds=time.perf_counter() - started)
