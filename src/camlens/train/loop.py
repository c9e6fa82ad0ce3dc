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
import torch.nn.functional as F
from tqdm.auto import tqdm

from camlens.atomic import WriteError
from camlens.data import DataError, Dataset, augment, balanced_subset, channel_stats
from camlens.distributed import (
    all_sum,
    broadcast_buffers,
    is_writer,
    rank,
    shard,
    world_size,
)
from camlens.evaluate import as_float_images, autocast, predict
from camlens.model import ResNet18
from camlens.train.config import RunError, TrainConfig
from camlens.train.files import write_epoch
from camlens.train.state import RESUME_FILE, check_resumable, load_resume, saved_config

__all__ = ["default_sampler", "train"]


def _seeded(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def default_sampler(pool: torch.Tensor, seed: int) -> Callable[[int], torch.Tensor]:
    """A fresh permutation of `pool` each epoch, fixed by (seed, epoch)."""

    def sample(epoch: int) -> torch.Tensor:
        # drawn on the CPU whatever the default device: the same order on any machine
        return pool[torch.randperm(len(pool), generator=_seeded(seed, epoch), device="cpu")]

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
    log: Callable[[str], None] = tqdm.write,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train a ResNet18 on `data.train`, test each epoch on `data.test`, checkpoint in `out`.

    Returns the last epoch's metrics. `resume=True` continues the run in `out`; without it a
    folder that already holds a run is refused rather than overwritten.
    """
    out, device = Path(out), torch.device(device)
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

    pool = torch.arange(len(data.train))
    if config.subset is not None:
        pool = balanced_subset(data.train.labels, min(config.subset, len(data.train)))
    sampler = sampler or default_sampler(pool, config.seed)
    batch_size = min(config.batch_size, len(pool))  # the global batch, over all ranks
    steps = len(pool) // batch_size  # a ragged last batch would change BatchNorm statistics
    resuming = resume and _every_rank_sees(resume_path)
    # the budget's rules decided (a resumed run keeps its own); the checkpoint records them
    config = config.decided(config.epochs * steps, saved_config(resume_path) if resuming else None)
    world = world_size()
    if config.sync_bn and world == 1:  # nothing to share: the recipe must not claim it
        log("--sync-bn does nothing in one process (it shares batch statistics between processes)")
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
    local = slice(rank() * batch_size // world, (rank() + 1) * batch_size // world)

    mean, std = channel_stats(data.train.images[pool])
    torch.manual_seed(config.seed)
    with torch.device("cpu"):  # initial weights from the CPU's stream, whatever the default
        model = ResNet18(
            len(data.classes), config.norm, config.width, mean, std, config.zero_init_residual
        )
    model = model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if config.sync_bn and world > 1:  # batch statistics over the global batch, as one process
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # norm scales/shifts and biases are 1-d; scale-invariant layers need no decay on them
    decayed = [p for p in model.parameters() if config.decay_norms or p.ndim > 1]
    groups = [{"params": decayed}]
    if not config.decay_norms:
        flat = [p for p in model.parameters() if p.ndim <= 1]
        groups.append({"params": flat, "weight_decay": 0.0})
    optimizer = torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    # OneCycleLR needs at least a step in each phase; tiny runs get a slightly longer warm-up
    total = max(config.epochs * steps, 4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.lr,
        total_steps=total,
        pct_start=max(config.warmup, 1.5 / total),
        # momentum falls as the learning rate rises (Smith 2018), around the configured value
        base_momentum=config.momentum - 0.05,
        max_momentum=config.momentum + 0.05,
    )

    start, history, elapsed = 0, [], 0.0
    if resuming:
        check_resumable(resume_path, config, data)
        start, history, elapsed, saved_world = load_resume(resume_path, model, optimizer, scheduler)
        note = ""
        if saved_world != world and start < config.epochs:  # a finished run trains nothing
            note = (
                f" (trained so far by {saved_world} processes, now {world}: same global batch "
                "and schedule; weights equal to float tolerance, not bit for bit)"
            )
        if is_writer():
            log(f"resuming {out} after epoch {start}/{config.epochs}{note}")
    # DDP starts by copying rank 0's weights to every rank, and averages gradients each step
    stepper = model
    if world > 1:
        ids = [device] if device.type == "cuda" else None
        stepper = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    train_images = data.train.images.to(device)  # uint8 on the device: 4x less to move than fp32
    train_labels = data.train.labels.to(device)
    # each rank tests its share, cut at whole batches; the sums are added over the ranks
    mine = shard(len(data.test), config.eval_batch_size)
    test_images, test_labels = data.test.images[mine].to(device), data.test.labels[mine].to(device)
    metrics: dict = history[-1] if history else {}
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        order = sampler(epoch).to(device)
        generator = _seeded(config.seed, epoch, device)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(
            range(steps),
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            disable=not (progress and is_writer()),
            unit="step",
        )
        for step in bar:
            idx = order[step * batch_size : (step + 1) * batch_size]
            images = as_float_images(train_images[idx])
            # the whole global batch is augmented on every rank, so that each image gets the
            # random crop, flip and hole it gets in one process (cheap next to the step)
            images = augment(
                images, generator, config.crop, config.flip, config.cutout, padding=config.padding
            )
            images = images[local].contiguous(memory_format=memory_format)
            labels = train_labels[idx][local]
            with autocast(device, config.precision):
                logits = stepper(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            if step % 10 == 0 or step == steps - 1:  # .item() syncs a GPU: not every step
                seen = (step + 1) * len(labels)  # this rank's share
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.1%}"
                )
        train_seconds = time.perf_counter() - t0
        seen = steps * batch_size
        broadcast_buffers(model)  # each rank tests the model rank 0 saves (BN running stats)
        logits = predict(model, test_images, config.eval_batch_size, precision=config.precision)
        # (loss sum, correct) of this rank's images, then of all: double keeps counts exact
        test_sums = torch.zeros(2, dtype=torch.float64, device=device)
        if len(test_labels):
            test_sums[0] = F.cross_entropy(logits, test_labels, reduction="sum")
            test_sums[1] = (logits.argmax(1) == test_labels).sum()
        train_sums = torch.stack([loss_sum.double(), correct.double()])
        train_loss, train_correct, test_loss, test_correct = all_sum(
            torch.cat([train_sums, test_sums])
        ).tolist()
        metrics = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss / seen,
            "train_acc": train_correct / seen,
            "test_loss": test_loss / len(data.test),
            "test_acc": test_correct / len(data.test),
            "seconds": time.perf_counter() - t0,
            "images_per_s": seen / train_seconds,
        }
        history.append(metrics)
        elapsed += metrics["seconds"]
        if not is_writer():
            continue  # only rank 0 logs and writes
        log(
            f"epoch {epoch}/{config.epochs}  lr {metrics['lr']:.4f}  "
            f"train loss {metrics['train_loss']:.3f} acc {metrics['train_acc']:.2%}  "
            f"test loss {metrics['test_loss']:.3f} acc {metrics['test_acc']:.2%}  "
            f"{metrics['images_per_s']:.0f} img/s  {metrics['seconds']:.0f}s"
        )
        try:
            write_epoch(out, model, optimizer, scheduler, config, data, history, elapsed, device)
        except WriteError as e:  # a full disk: each file still holds an earlier epoch whole
            raise RunError(
                f"{e}; the run is saved up to epoch {epoch - 1}: "
                "continue it with --resume once that file can be written"
            ) from None
        if on_epoch is not None:
            on_epoch(metrics)
    return metrics


def _every_rank_sees(path: Path) -> bool:
    """Whether `path` exists; under torchrun every rank reads the resume state itself, so the
    run folder must be one every machine sees."""
    seen = all_sum(torch.tensor([float(path.exists())], device="cpu"))
    if 0 < seen.item() < world_size():
        raise RunError(
            f"only some processes see {path}: put --out on a filesystem every machine shares"
        )
    return seen.item() > 0
