"""Training: a frozen `TrainConfig`, `train(...)`, and exact resume after a kill.

Every random choice of an epoch (order, crops, flips, holes) comes from generators seeded by
`(seed, epoch)`, and each epoch ends by writing the model, optimizer and schedule to
`resume.safetensors` in one atomic rename. A run killed at any point therefore restarts from
the last finished epoch and ends with the same weights as a run that was never stopped.

The loop is written for a later DistributedDataParallel mode: `is_writer()` is the one place
that decides which process logs and saves, and the sampler (epoch -> indices) is a parameter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from tqdm.auto import tqdm

import camlens
from camlens.atomic import atomic_save_tensors, atomic_write_bytes
from camlens.data import Dataset, augment, balanced_subset, channel_stats
from camlens.evaluate import as_float_images, autocast, predict
from camlens.model import NORMS, ResNet18, save_checkpoint
from camlens.plots import plot_curves

__all__ = ["TrainConfig", "train", "RunError", "is_writer", "tensorboard_logger"]

RESUME_FILE = "resume.safetensors"


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainConfig:
    """The recipe of one run; the CLI builds its flags from these fields."""

    epochs: int = _opt(30, "passes over the training images")
    batch_size: int = _opt(128, "images per step (128 is fastest per image on 2 CPU cores)")
    lr: float = _opt(0.1, "peak learning rate of the one-cycle schedule")
    momentum: float = _opt(0.9, "SGD momentum (Nesterov), the centre of one-cycle's +-0.05 swing")
    weight_decay: float = _opt(5e-4, "L2 weight decay")
    label_smoothing: float = _opt(0.1, "share of the target spread over the other classes")
    warmup: float = _opt(0.25, "share of the steps spent rising to the peak learning rate")
    norm: str = _opt("batch", "normalisation layers", choices=NORMS)
    width: int = _opt(64, "channels of the first stage (64 is the standard ResNet18)")
    zero_init_residual: bool = _opt(True, "start each residual block as the identity")
    seed: int = _opt(0, "seed for initialisation, order and augmentation")
    subset: int | None = _opt(None, "train on the first N images (balanced across classes)")
    crop: bool = _opt(True, "random crop with 4-pixel padding")
    flip: bool = _opt(True, "random horizontal flip")
    cutout: bool = _opt(True, "8x8 cutout")
    precision: str = _opt("auto", "auto (bf16 autocast) or fp32", choices=("auto", "bf16", "fp32"))
    channels_last: bool = _opt(True, "channels-last memory format (faster convolutions)")
    eval_batch_size: int = _opt(64, "images per batch when testing")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "width", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.subset is not None and self.subset < 2:
            raise ValueError(f"subset must be at least 2 images, got {self.subset}")
        if not 0.05 <= self.momentum <= 0.95:
            raise ValueError(f"momentum must lie between 0.05 and 0.95, got {self.momentum}")
        if not 0 < self.warmup < 1:
            raise ValueError(f"warmup must lie between 0 and 1, got {self.warmup}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")


class RunError(RuntimeError):
    """A run folder that cannot be started or resumed as asked."""


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


# ----------------------------------------------------------------------------- resume state


def _save_resume(
    path: Path, model, optimizer, scheduler, epoch: int, history, config, elapsed, checksum: str
):
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    scalars = {
        str(i): {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)}
        for i, s in opt["state"].items()
    }
    metadata = {
        "epoch": str(epoch),
        "config": json.dumps(asdict(config)),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "scheduler": json.dumps(scheduler.state_dict()),
        "history": json.dumps(history),
        "elapsed": repr(elapsed),
        "data_checksum": checksum,
    }
    atomic_save_tensors(path, tensors, metadata)


def _check_resumable(path: Path, config: TrainConfig, data: Dataset) -> None:
    """Refuse to continue a run with other settings or other data: the result would be neither."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    saved = json.loads(meta["config"])
    differs = {k for k in saved if saved[k] != asdict(config).get(k) and k != "eval_batch_size"}
    if differs:
        raise RunError(
            f"{path.parent} was trained with other settings ({', '.join(sorted(differs))}): "
            "resume with the same flags, or choose another --out"
        )
    if meta.get("data_checksum", data.checksum) != data.checksum:
        raise RunError(
            f"{path.parent} was trained on other data (checksum {meta['data_checksum'][:12]}, "
            f"now {data.checksum[:12]}): resume with the same --data, or choose another --out"
        )


def _load_resume(path: Path, model, optimizer, scheduler) -> tuple[int, list, float]:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        names = f.keys()  # safe_open is not a dict: keys() is its only listing
        tensors = {k: f.get_tensor(k) for k in names}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {int(i): dict(s) for i, s in json.loads(meta["optim_scalars"]).items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    scheduler.load_state_dict(json.loads(meta["scheduler"]))
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["epoch"]), json.loads(meta["history"]), float(meta["elapsed"])


# ----------------------------------------------------------------------------- the loop


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
    optimizer = torch.optim.SGD(
        model.parameters(),
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
        _check_resumable(resume_path, config, data)
        start, history, elapsed = _load_resume(resume_path, model, optimizer, scheduler)
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
            _write_epoch(out, model, optimizer, scheduler, config, data, history, elapsed, device)
        if on_epoch is not None:
            on_epoch(metrics)
    return metrics


def _write_epoch(out, model, optimizer, scheduler, config, data, history, elapsed, device) -> None:
    """Resume state first (one atomic file), then the checkpoint pair, then the logs."""
    epoch = history[-1]["epoch"]
    _save_resume(
        out / RESUME_FILE,
        model,
        optimizer,
        scheduler,
        epoch,
        history,
        config,
        elapsed,
        data.checksum,
    )
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
        "camlens_version": camlens.__version__,
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
