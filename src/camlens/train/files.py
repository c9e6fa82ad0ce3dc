"""What each finished epoch leaves in the run folder: checkpoint pair, logs, resume state.

Under torchrun only rank 0 calls it; the json records how many processes trained the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from camlens.atomic import atomic_write_bytes
from camlens.distributed import backend, world_size
from camlens.evaluate import resolve_precision
from camlens.model import save_checkpoint
from camlens.plots import plot_curves
from camlens.train.kept import epoch_stem
from camlens.train.state import RESUME_FILE, save_resume
from camlens.train.steps import Training
from camlens.version import __version__

__all__ = ["write_epoch"]


def write_epoch(out: Path, training: Training, history: list[dict], elapsed: float) -> None:
    """The checkpoint pair, the logs, and last the resume state: a run stopped (killed, or out
    of disk space) before the resume file is renamed redoes this epoch whole, and none after."""
    config, data, device, model = training.config, training.data, training.device, training.model
    epoch = history[-1]["epoch"]
    meta = {
        "classes": list(data.classes),
        "image_size": data.image_size,
        "epoch": epoch,
        "epochs": config.epochs,
        "metrics": history[-1],
        "train_seconds": round(elapsed, 1),
        "data_source": data.source,
        "data_checksum": data.checksum,
        "data_label": data.label,
        "train_images": len(data.train)
        if config.subset is None
        else min(config.subset, len(data.train)),
        "camlens_version": __version__,
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": world_size(),  # processes that trained it (1 without torchrun)
        "backend": backend(),  # their process group's: gloo, nccl; None for one process
        "recipe": {
            **asdict(config),
            "optimizer": "SGD (Nesterov)",
            "schedule": "one-cycle (cosine)",
            "augmentation": _augmentation(config),
            "precision_used": resolve_precision(config.precision, device),
        },
    }
    save_checkpoint(model, out / "checkpoint", meta)
    if config.keep_every and epoch % config.keep_every == 0:  # for explain --over-epochs
        save_checkpoint(model, epoch_stem(out, epoch), meta, torch.float16)
    lines = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write_bytes(out / "metrics.jsonl", lines.encode())  # rewritten whole: never a torn line
    plot_curves(history, out / "curves.png")
    save_resume(out / RESUME_FILE, training, history, elapsed)


def _augmentation(config) -> str:
    """The augmentation a recipe runs, in words: "crop (pad 4, reflect) / flip" ..."""
    steps = [f"crop (pad 4, {config.padding})"] if config.crop else []
    steps += ["flip"] * config.flip + ["cutout 8x8"] * config.cutout
    return " / ".join(steps or ["none"]) + ", batched on the training device"
