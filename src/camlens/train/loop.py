"""The training loop; `files.write_epoch` is what each finished epoch leaves in the run folder.

Every random choice of an epoch comes from generators seeded by `(seed, epoch)`, so a resumed
run replays exactly the epochs it has not finished.

Under torchrun (DistributedDataParallel) every rank draws the same permutation and augments the
same global batch of `batch_size` images, then trains on its own contiguous slice of it; DDP
averages the gradients, so a step is the step of one process on the whole batch, and the
schedule counts the same global steps whatever the number of processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from camlens.atomic import WriteError
from camlens.data import DataError, Dataset, balanced_subset, channel_stats
from camlens.distributed import (
    all_sum,
    broadcast_buffers,
    is_writer,
    shard,
    world_size,
)
from camlens.train.config import RunError, TrainConfig
from camlens.train.files import write_epoch
from camlens.train.state import RESUME_FILE, check_resumable, load_resume, saved_config
from camlens.train.steps import Training, seeded

__all__ = ["default_sampler", "train"]


def default_sampler(pool: torch.Tensor, seed: int) -> Callable[[int], torch.Tensor]:
    """A fresh permutation of `pool` each epoch, fixed by (seed, epoch)."""

    def sample(epoch: int) -> torch.Tensor:
        # drawn on the CPU whatever the default device: the same order on any machine
        return pool[torch.randperm(len(pool), generator=seeded(seed, epoch), device="cpu")]

    return sample


def train(
    config: TrainConfig,
    data: Dataset,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: bool = True,
    sampler: Callable[[int], torch.Tensor] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train a ResNet18 on `data.train`, test each epoch on `data.test`, checkpoint in `out`.

    Returns the last epoch's metrics. `resume=True` continues the run in `out`; without it a
    folder that already holds a run is refused rather than overwritten. `sampler(epoch)`: the
    epoch's order of training images (default: a seeded permutation of the pool);
    `on_epoch(metrics)`: called on rank 0 after each epoch is written.
    """
    out, device = Path(out), torch.device(device)
    resume_path = _check_out(data, out, resume)
    pool = torch.arange(len(data.train))
    if config.subset is not None:
        pool = balanced_subset(data.train.labels, min(config.subset, len(data.train)))
    sampler = sampler or default_sampler(pool, config.seed)
    batch_size = min(config.batch_size, len(pool))  # the global batch, over all ranks
    steps = len(pool) // batch_size  # a ragged last batch would change BatchNorm statistics
    resuming = resume and _every_rank_sees(resume_path)
    # the budget's rules decided (a resumed run keeps its own); the checkpoint records them
    config = config.decided(config.epochs * steps, saved_config(resume_path) if resuming else None)
    config = _check_launch(config, batch_size, device)
    run = Training(config, data, device, batch_size, steps, progress)
    run.build(channel_stats(data.train.images[pool]))
    start, history, elapsed = 0, [], 0.0
    if resuming:
        start, history, elapsed = _resume(run, resume_path, out)
    run.distribute()
    # each rank tests its share, cut at whole batches; the sums are added over the ranks
    mine = shard(len(data.test), config.eval_batch_size)
    test = (data.test.images[mine].to(device), data.test.labels[mine].to(device))
    metrics: dict = history[-1] if history else {}
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        train_sums, train_seconds = run.epoch(epoch, sampler(epoch).to(device))
        broadcast_buffers(run.model)  # each rank tests the model rank 0 saves (BN running stats)
        metrics = _metrics(run, epoch, train_sums, run.test_sums(*test), t0, train_seconds)
        history.append(metrics)
        elapsed += metrics["seconds"]
        if not is_writer():
            continue  # only rank 0 logs and writes
        tqdm.write(
            f"epoch {epoch}/{config.epochs}  lr {metrics['lr']:.4f}  "
            f"train loss {metrics['train_loss']:.3f} acc {metrics['train_acc']:.2%}  "
            f"test loss {metrics['test_loss']:.3f} acc {metrics['test_acc']:.2%}  "
            f"{metrics['images_per_s']:.0f} img/s  {metrics['seconds']:.0f}s"
        )
        try:
            write_epoch(out, run, history, elapsed)
        except WriteError as e:  # a full disk: each file still holds an earlier epoch whole
            raise RunError(
                f"{e}; the run is saved up to epoch {epoch - 1}: "
                "continue it with --resume once that file can be written"
            ) from None
        if on_epoch is not None:
            on_epoch(metrics)
    return metrics


def _check_out(data: Dataset, out: Path, resume: bool) -> Path:
    """The run's resume file, after the checks that need no training: data to train on, and
    no run in `out` overwritten without --resume."""
    if len(data.train) == 0:
        raise DataError(
            f"{data.source} has no training images: train on cifar10, a folder with train/ and "
            "test/ class folders, or a .tar.gz of one"
        )
    resume_path = out / RESUME_FILE
    if resume_path.exists() and not resume:
        raise RunError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    if is_writer():
        out.mkdir(parents=True, exist_ok=True)
    return resume_path


def _check_launch(config: TrainConfig, batch_size: int, device: torch.device) -> TrainConfig:
    """The config as the processes can run it: one-line errors for what they cannot."""
    world = world_size()
    if config.sync_bn and world == 1:  # nothing to share: the recipe must not claim it
        tqdm.write(
            "--sync-bn does nothing in one process (it shares batch statistics between processes)"
        )
        config = replace(config, sync_bn=False)
    if batch_size % world:
        raise RunError(
            f"a batch of {batch_size} images does not split across {world} processes: "
            f"pass a --batch-size that is a multiple of {world}"
        )
    if config.sync_bn and world > 1 and device.type != "cuda":
        raise RunError(
            "--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the CPU): "
            "drop it, or train with --norm layer or group, which have no batch statistics"
        )
    return config


def _resume(run: Training, path: Path, out: Path) -> tuple[int, list, float]:
    """The saved run's epoch, history and seconds, its state loaded into `run`."""
    config, world = run.config, world_size()
    check_resumable(path, config, run.data)
    start, history, elapsed, saved_world = load_resume(
        path, run.model, run.optimizer, run.scheduler
    )
    note = ""
    if saved_world != world and start < config.epochs:  # a finished run trains nothing
        note = (
            f" (trained so far by {saved_world} processes, now {world}: same global batch "
            "and schedule; weights equal to float tolerance, not bit for bit)"
        )
    if is_writer():
        tqdm.write(f"resuming {out} after epoch {start}/{config.epochs}{note}")
    return start, history, elapsed


def _metrics(run: Training, epoch: int, train_sums, test_sums, t0: float, train_seconds) -> dict:
    """An epoch's metrics over every rank's images: sums added, then divided once."""
    # (loss sum, correct) of train then test; double keeps counts exact
    train_loss, train_correct, test_loss, test_correct = all_sum(
        torch.cat([train_sums, test_sums])
    ).tolist()
    seen, tested = run.steps * run.batch_size, len(run.data.test)
    return {
        "epoch": epoch,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": train_loss / seen,
        "train_acc": train_correct / seen,
        "test_loss": test_loss / tested,
        "test_acc": test_correct / tested,
        "seconds": time.perf_counter() - t0,
        "images_per_s": seen / train_seconds,
    }


def _every_rank_sees(path: Path) -> bool:
    """Whether `path` exists; under torchrun every rank reads the resume state itself, so the
    run folder must be one every machine sees."""
    seen = all_sum(torch.tensor([float(path.exists())], device="cpu"))
    if 0 < seen.item() < world_size():
        raise RunError(
            f"only some processes see {path}: put --out on a filesystem every machine shares"
        )
    return seen.item() > 0
