"""One training run's moving parts in one object: the model, its optimizer and schedule, the
data on the device, and the step of an epoch, for `loop.train` and the files it writes.

Every random choice of an epoch comes from generators seeded by `(seed, epoch)`; under torchrun
every rank augments the whole global batch the same way and steps its own slice of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from camlens.data import Dataset, augment
from camlens.distributed import is_writer, rank, world_size
from camlens.evaluate import as_float_images, autocast, predict
from camlens.model import ResNet18
from camlens.train.config import TrainConfig

__all__ = ["Training", "seeded"]


def seeded(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch's draws: the same for a resumed run as for an unbroken
    one, and on any device (the draws are moved to the images)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


@dataclass
class Training:
    """What an epoch needs, built once by `build` (and `distribute` under torchrun)."""

    config: TrainConfig
    data: Dataset
    device: torch.device
    batch_size: int  # the global batch, over all ranks
    steps: int  # per epoch
    progress: bool
    model: torch.nn.Module = field(init=False)
    stepper: torch.nn.Module = field(init=False)  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LRScheduler = field(init=False)

    def build(self, stats: tuple[torch.Tensor, torch.Tensor]) -> None:
        """The model (normalising with the pool's channel `stats`), optimizer and schedule."""
        config = self.config
        torch.manual_seed(config.seed)
        with torch.device("cpu"):  # initial weights from the CPU's stream, whatever the default
            model = ResNet18(
                len(self.data.classes), config.norm, config.width, *stats, config.zero_init_residual
            )
        model = model.to(self.device).to(memory_format=self.memory_format)
        if config.sync_bn and world_size() > 1:  # batch statistics over the global batch
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = self.stepper = model
        # norm scales/shifts and biases are 1-d; scale-invariant layers need no decay on them
        decayed = [p for p in model.parameters() if config.decay_norms or p.ndim > 1]
        groups = [{"params": decayed}]
        if not config.decay_norms:
            flat = [p for p in model.parameters() if p.ndim <= 1]
            groups.append({"params": flat, "weight_decay": 0.0})
        self.optimizer = torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
        # OneCycleLR needs at least a step in each phase; tiny runs get a slightly longer warm-up
        total = max(config.epochs * self.steps, 4)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=config.lr,
            total_steps=total,
            pct_start=max(config.warmup, 1.5 / total),
            # momentum falls as the learning rate rises (Smith 2018), around the configured value
            base_momentum=config.momentum - 0.05,
            max_momentum=config.momentum + 0.05,
        )

    def distribute(self) -> None:
        """Under torchrun: DDP copies rank 0's weights to every rank and averages gradients
        each step. The training images go to the device once, as uint8: 4x less than fp32."""
        if world_size() > 1:
            ids = [self.device] if self.device.type == "cuda" else None
            self.stepper = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.images = self.data.train.images.to(self.device)
        self.labels = self.data.train.labels.to(self.device)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.channels_last else torch.contiguous_format

    def epoch(self, epoch: int, order: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One epoch of steps over `order` (training indices): this rank's (loss sum, correct)
        as float64, and the seconds it took."""
        config, t0 = self.config, time.perf_counter()
        world = world_size()
        local = slice(rank() * self.batch_size // world, (rank() + 1) * self.batch_size // world)
        generator = seeded(config.seed, epoch)  # the CPU's draws on any device, then moved
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        bar = tqdm(
            range(self.steps),
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            disable=not (self.progress and is_writer()),
            unit="step",
        )
        for step in bar:
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            # the whole global batch is augmented on every rank, so that each image gets the
            # random crop, flip and hole it gets in one process (cheap next to the step)
            images = augment(
                as_float_images(self.images[idx]),
                generator,
                config.crop,
                config.flip,
                config.cutout,
                padding=config.padding,
            )
            images = images[local].contiguous(memory_format=self.memory_format)
            labels = self.labels[idx][local]
            with autocast(self.device, config.precision):
                logits = self.stepper(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            if step % 10 == 0 or step == self.steps - 1:  # .item() syncs a GPU: not every step
                seen = (step + 1) * len(labels)  # this rank's share
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.1%}"
                )
        return torch.stack([loss_sum.double(), correct.double()]), time.perf_counter() - t0

    def test_sums(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(loss sum, correct) of this rank's test images, float64 (counts stay exact)."""
        logits = predict(
            self.model, images, self.config.eval_batch_size, precision=self.config.precision
        )
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        if len(labels):
            sums[0] = F.cross_entropy(logits, labels, reduction="sum")
            sums[1] = (logits.argmax(1) == labels).sum()
        return sums
