"""Optional TensorBoard mirror of the metrics: imported only when a run asks for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from camlens.train.config import RunError

__all__ = ["tensorboard_logger"]


def tensorboard_logger(out: str | Path) -> Callable[[dict], None]:
    """An `on_epoch` callback that mirrors each epoch's metrics into TensorBoard event files.

    metrics.jsonl stays the source of truth; a resumed run purges the events of epochs it
    redoes, so the curves never double back.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunError(
            "--tensorboard needs the tensorboard package: pip install 'camlens[tensorboard]'"
        ) from None
    writers: dict[str, SummaryWriter] = {}

    def log_epoch(metrics: dict) -> None:
        epoch = metrics["epoch"]
        if "w" not in writers:
            writers["w"] = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=epoch)
        w = writers["w"]
        for split in ("train", "test"):
            w.add_scalar(f"loss/{split}", metrics[f"{split}_loss"], epoch)
            w.add_scalar(f"accuracy/{split}", metrics[f"{split}_acc"], epoch)
        w.add_scalar("lr", metrics["lr"], epoch)
        w.add_scalar("images_per_s", metrics["images_per_s"], epoch)
        w.flush()

    return log_epoch
