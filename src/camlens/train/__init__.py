"""Training: a frozen `TrainConfig`, `train(...)`, and exact resume after a kill.

Every random choice of an epoch (order, crops, flips, holes) comes from generators seeded by
`(seed, epoch)`, and each epoch ends, after its checkpoint and logs, by writing the model,
optimizer and schedule to `resume.safetensors` in one atomic, synced rename. A run killed at
any point therefore restarts from the last finished epoch and ends with the same weights as a
run that was never stopped.

The loop is written for a later DistributedDataParallel mode: `is_writer()` is the one place
that decides which process logs and saves, and the sampler (epoch -> indices) is a parameter.
"""

from camlens.train.config import RunError, TrainConfig
from camlens.train.loop import is_writer, train
from camlens.train.tensorboard import tensorboard_logger
from camlens.train.wandb_log import WandbLogger, wandb_logger

__all__ = [
    "RunError",
    "TrainConfig",
    "WandbLogger",
    "is_writer",
    "tensorboard_logger",
    "train",
    "wandb_logger",
]
