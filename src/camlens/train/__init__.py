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

from importlib import import_module
from typing import Any

# each name's module, imported when the name is first used: `config` imports no torch, so the
# CLI builds TrainConfig's flags (and `camlens train --help` answers) without it
_MODULE_OF = {
    "CUTOUT_FROM": "camlens.train.config",
    "EPOCHS_DIR": "camlens.train.kept",
    "Logs": "camlens.train.session",
    "RunError": "camlens.train.config",
    "TrainConfig": "camlens.train.config",
    "ZERO_INIT_BELOW": "camlens.train.config",
    "WandbLogger": "camlens.train.wandb_log",
    "epoch_stem": "camlens.train.kept",
    "is_writer": "camlens.distributed",
    "kept_epochs": "camlens.train.kept",
    "run_training": "camlens.train.session",
    "train": "camlens.train.loop",
}

__all__ = [
    "CUTOUT_FROM",
    "EPOCHS_DIR",
    "Logs",
    "RunError",
    "TrainConfig",
    "WandbLogger",
    "ZERO_INIT_BELOW",
    "epoch_stem",
    "is_writer",
    "kept_epochs",
    "run_training",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
