"""`run_training`: a whole training run as `camlens train`, `camlens run` and torchrun start it.

`train` is the loop; this adds what surrounds it once: the process group under torchrun, the
optional TensorBoard and W&B mirrors on rank 0, and closing the W&B run whatever happens (a
killed run closes it too, and `resume` reopens the same one).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from camlens.data import Dataset
from camlens.distributed import is_writer, process_group
from camlens.train.config import RunError, TrainConfig
from camlens.train.loop import train
from camlens.train.wandb_log import WandbLogger

__all__ = ["Logs", "run_training"]


@dataclass(frozen=True)
class Logs:
    """Where a training run mirrors its epochs besides OUT/metrics.jsonl."""

    tensorboard: bool = False  # into OUT/tensorboard
    # into Weights & Biases (OUT/wandb; offline without an API key); None: not
    wandb_project: str | None = None
    # a finished run's W&B logger is handed back open, for the caller's `finish(...)` with more
    # pictures; else it is finished with the accuracy and the curves
    keep_wandb_open: bool = False


def run_training(
    config: TrainConfig,
    data: Dataset,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    resume: bool = False,
    progress: bool = True,
    logs: Logs | None = None,
) -> tuple[dict, WandbLogger | None]:
    """Train in `out` (see `train`) and return (the last epoch's metrics, the W&B logger).

    Under torchrun every rank trains in one process group, left before this returns; only
    rank 0 logs, mirrors and writes. `logs`: where else each epoch is mirrored (`Logs`).
    """
    out, writer, logs = Path(out), is_writer(), logs or Logs()
    tensorboard, wandb_project = logs.tensorboard, logs.wandb_project
    loggers = [_tensorboard(out)] if tensorboard and writer else []
    wandb = None
    if wandb_project is not None and writer:
        if importlib.util.find_spec("wandb") is None:
            raise RunError("--wandb needs the wandb package: pip install 'camlens[wandb]'")
        wandb = WandbLogger(out, wandb_project, dataclasses.asdict(config))
        loggers.append(wandb)
    try:
        with process_group(torch.device(device), backend) as rank_device:
            metrics = train(
                config,
                data,
                out,
                device=rank_device,
                resume=resume,
                progress=progress and writer,
                on_epoch=(lambda m: [log(m) for log in loggers]) if loggers else None,
            )
    except BaseException:  # Ctrl-C, a kill, a full disk: W&B keeps what it has
        if wandb is not None:
            wandb.finish(curves=out / "curves.png")
        raise
    if wandb is not None and not logs.keep_wandb_open:
        wandb.finish(accuracy=metrics.get("test_acc"), curves=out / "curves.png")
        wandb = None
    return metrics, wandb


def _tensorboard(out: Path) -> Callable[[dict], None]:
    """An `on_epoch` callback mirroring each epoch's metrics into OUT/tensorboard event files;
    metrics.jsonl stays the source of truth. A resumed run purges the events of the epochs it
    redoes, so the curves never double back."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunError(
            "--tensorboard needs the tensorboard package: pip install 'camlens[tensorboard]'"
        ) from None
    writers: dict[str, SummaryWriter] = {}

    def log_epoch(metrics: dict) -> None:
        epoch = metrics["epoch"]
        if "w" not in writers:  # opened at the first epoch this run trains: purged from there
            writers["w"] = SummaryWriter(str(out / "tensorboard"), purge_step=epoch)
        w = writers["w"]
        for split in ("train", "test"):
            w.add_scalar(f"loss/{split}", metrics[f"{split}_loss"], epoch)
            w.add_scalar(f"accuracy/{split}", metrics[f"{split}_acc"], epoch)
        w.add_scalar("lr", metrics["lr"], epoch)
        w.add_scalar("images_per_s", metrics["images_per_s"], epoch)
        w.flush()

    return log_epoch
