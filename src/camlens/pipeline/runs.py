"""The whole job from training, and the offline demo: both end with `report`."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from camlens.classifier import ModelConfig, open_model
from camlens.data import Dataset
from camlens.distributed import is_writer
from camlens.explain import ExplainPlan
from camlens.model import ResNet18
from camlens.pipeline.galleries import LAYERS, prepare_plan
from camlens.pipeline.reports import Outcome, describe_run, epochs_section, explain_model
from camlens.plots import plot_confusion
from camlens.train import Logs, TrainConfig, run_training

__all__ = ["demo", "run"]


def run(
    config: TrainConfig,
    data: Dataset,
    out: str | Path,
    plan: ExplainPlan | None = None,
    *,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    tensorboard: bool = False,
    wandb_project: str | None = None,
) -> Outcome | None:
    """Train in `out` (continuing a killed run there), then evaluate into out/eval and
    `explain_model` the checkpoint. `config.precision` is the training's precision,
    `plan.cam_precision` the maps'.

    `plan` None: layer3 and layer4, at most 1,000 mistakes (a short run makes thousands: the
    gallery and the page stay small), progress bars; see `explain_model`. `plan.progress`
    also shows the training's bars. `wandb_project`: also log to
    Weights & Biases (OUT/wandb; offline without an API key): each epoch, then curves,
    confusion, cards, accuracy. Under torchrun every rank trains, then rank 0 alone reports;
    the others return None.
    """
    started, out = time.perf_counter(), Path(out)
    # fail before hours of training, not after: the plan is resolved ("auto" layers) and
    # checked on an untrained twin, as every other command does on its model
    twin = ResNet18(len(data.classes), config.norm, config.width)
    plan = prepare_plan(
        twin, plan or ExplainPlan(layers=LAYERS, limit=1000, progress=True), data.image_size
    )
    _, wandb = run_training(
        config,
        data,
        out,
        device=device,
        backend=backend,
        resume=True,  # continues the run in `out` when there is one, else starts it
        progress=plan.progress,
        logs=Logs(tensorboard, wandb_project, keep_wandb_open=True),
    )
    if not is_writer():
        return None
    opened = open_model(ModelConfig(str(out / "checkpoint.safetensors")), data, device)
    model, meta = opened.model, opened.meta
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    run_info = describe_run(
        meta,
        checkpoint=str(out / "checkpoint.safetensors"),
        data=data.source,
        data_label=data.label,
    )
    outcome = explain_model(
        model,
        data,
        out,
        plan,
        run_info=run_info,
        history=history,
        over_epochs=epochs_section(out, data, plan) if config.keep_every else None,
    )
    if wandb is not None:
        cards = [p for f in outcome.galleries.folders.values() for p in sorted(f.glob("*.png"))]
        wandb.finish(
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
    opened = open_model(ModelConfig("shipped"), "sample", device, progress=False)
    model, meta, data = opened.model, opened.meta, opened.data
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
    outcome = explain_model(
        model,
        data,
        out,
        plan or ExplainPlan(layers=LAYERS),
        run_info=run_info,
        history=meta.get("history"),
    )
    return replace(outcome, seconds=time.perf_counter() - started)
