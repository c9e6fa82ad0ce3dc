"""The training loop, and what each finished epoch leaves in the run folder.

Every random choice of an epoch comes from generators seeded by `(seed, epoch)`, so a resumed
run replays exactly the epochs it has not finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from camlens.atomic import WriteError, atomic_write_bytes
from camlens.data import DataError, Dataset, augment, balanced_subset, channel_stats
from camlens.evaluate import as_float_images, autocast, predict
from camlens.model import ResNet18, save_checkpoint
from camlens.plots import plot_curves
from camlens.train.config import RunError, TrainConfig
from camlens.train.state import RESUME_FILE, check_resumable, load_resume, save_resume
from camlens.version import __version__

__all__ = ["default_sampler", "is_writer", "train"]


def is_writer() -> bool:
    """Only rank 0 logs and writes files when torch.distributed is running."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _seeded(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def default_sampler(pool: torch.Tensor, seed: int) -> Callable[[int], torch.Tensor]:
    """A fresh permutation of `pool` each epoch, fixed by (seed, epoch)."""

    def sample(epoch: int) -> torch.Tensor:
        return pool[torch.randperm(len(pool), generator=_seeded(seed, epoch))]

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
    batch_size = min(config.batch_size, len(pool))
    steps = len(pool) // batch_size  # a ragged last batch would change BatchNorm statistics

    mean, std = channel_stats(data.train.images[pool])
    torch.manual_seed(config.seed)
    model = ResNet18(
        len(data.classes), config.norm, config.width, mean, std, config.zero_init_residual
    ).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
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
    if resume and resume_path.exists():
        check_resumable(resume_path, config, data)
        start, history, elapsed = load_resume(resume_path, model, optimizer, scheduler)
        log(f"resuming {out} after epoch {start}/{config.epochs}")

    train_images = data.train.images.to(device)  # uint8 on the device: 4x less to move than fp32
    train_labels = data.train.labels.to(device)
    test_images, test_labels = data.test.images.to(device), data.test.labels.to(device)
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
            images = augment(images, generator, config.crop, config.flip, config.cutout)
            images = images.contiguous(memory_format=memory_format)
            labels = train_labels[idx]
            with autocast(device, config.precision):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == labels).sum()
            if step % 10 == 0 or step == steps - 1:  # .item() syncs a GPU: not every step
                seen = (step + 1) * batch_size
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.1%}"
                )
        train_seconds = time.perf_counter() - t0
        seen = steps * batch_size
        logits = predict(model, test_images, config.eval_batch_size, precision=config.precision)
        metrics = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum.item() / seen,
            "train_acc": correct.item() / seen,
            "test_loss": F.cross_entropy(logits, test_labels).item(),
            "test_acc": (logits.argmax(1) == test_labels).float().mean().item(),
            "seconds": time.perf_counter() - t0,
            "images_per_s": seen / train_seconds,
        }
        history.append(metrics)
        elapsed += metrics["seconds"]
        log(
            f"epoch {epoch}/{config.epochs}  lr {metrics['lr']:.4f}  "
            f"train loss {metrics['train_loss']:.3f} acc {metrics['train_acc']:.2%}  "
            f"test loss {metrics['test_loss']:.3f} acc {metrics['test_acc']:.2%}  "
            f"{metrics['images_per_s']:.0f} img/s  {metrics['seconds']:.0f}s"
        )
        if is_writer():
            try:
                _write_epoch(
                    out, model, optimizer, scheduler, config, data, history, elapsed, device
                )
            except WriteError as e:  # a full disk: each file still holds an earlier epoch whole
                raise RunError(
                    f"{e}; the run is saved up to epoch {epoch - 1}: "
                    "continue it with --resume once that file can be written"
                ) from None
        if on_epoch is not None:
            on_epoch(metrics)
    return metrics


def _write_epoch(out, model, optimizer, scheduler, config, data, history, elapsed, device) -> None:
    """The checkpoint pair, the logs, and last the resume state: a run stopped (killed, or out
    of disk space) before the resume file is renamed redoes this epoch whole, and none after."""
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
        "recipe": {
            **asdict(config),
            "optimizer": "SGD (Nesterov)",
            "schedule": "one-cycle (cosine)",
            "augmentation": "batched crop(pad 4) / flip / cutout 8x8 on the training device",
        },
    }
    save_checkpoint(model, out / "checkpoint", meta)
    lines = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write_bytes(out / "metrics.jsonl", lines.encode())  # rewritten whole: never a torn line
    plot_curves(history, out / "curves.png")
    state = (model, optimizer, scheduler, epoch, history, config, elapsed, data.checksum)
    save_resume(out / RESUME_FILE, *state)
