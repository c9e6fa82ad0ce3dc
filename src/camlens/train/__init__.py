"""Training: a frozen `TrainConfig`, `train(...)`, and exact resume after a kill.

Every random choice of an epoch (order, crops, flips, holes) comes from generators seeded by
`(seed, epoch)`, and each epoch ends, after its checkpoint and logs, by writing the model,
optimizer and schedule to `resume.safetensors` in one atomic, synced rename. A run killed at
any point therefore restarts from the last finished epoch and ends with the same weights as a
run that was never stopped.

Under torchrun the loop runs DistributedDataParallel (camlens.distributed): `batch_size` is
the global batch, split across the processes, and only rank 0 (`is_writer()`) logs and saves.
`run_training` is the whole run around the loop: process group, TensorBoard and W&B mirrors.
"""

from camlens.distributed import is_writer
from camlens.train.config import CUTOUT_FROM, ZERO_INIT_BELOW, RunError, TrainConfig
from camlens.train.loop import train
from camlens.train.session import run_training
from camlens.train.wandb_log import WandbLogger

__all__ = [
    "CUTOUT_FROM",
    "RunError",
    "TrainConfig",
    "WandbLogger",
    "ZERO_INIT_BELOW",
    "is_writer",
    "run_training",
    "train",
]
