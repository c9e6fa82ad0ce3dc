"""`run_training`: a whole training run as `camlens train`, `camlens run` and torchrun start it.

`train` is the loop; this adds what surrounds it once: the process group under torchrun, the
optional TensorBoard and W&B mirrors on rank 0, and closing the W&B run whatever happens (a
killed run closes it too, and `resume` reopens the same one).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch

from camlens.data import Dataset
from camlens.distributed import is_writer, process_group
from camlens.train.config import RunError, TrainConfig
from camlens.train.loop import train
from camlens.train.wandb_log import WandbLogger

__all__ = ["run_training"]


def run_training(
    config: TrainConfig,
    data: Dataset,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = False,
    wandb_project: str | None = None,
    keep_wandb_open: bool = False,
) -> tuple[dict, WandbLogger | None]:
    """Train in `out` (see `train`) and return (the last epoch's metrics, the W&B logger).

    Under torchrun every rank trains in one process group, left before this returns; only
    rank 0 logs, mirrors and writes. `tensorboard`: mirror each epoch into OUT/tensorboard;
    `wandb_project`: into Weights & Biases (OUT/wandb; offline without an API key). The W&B
    run is finished with the accuracy and the curves, unless `keep_wandb_open`: then a
    finished training hands it back open, for the caller's `finish(...)` with more pictures.
    """
    out, writer = Path(out), is_writer()
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
    if wandb is not None and not keep_wandb_open:
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
