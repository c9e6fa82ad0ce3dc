"""`TrainConfig`, the recipe of a run, and `RunError`, a run folder that cannot be used as asked.

Both sit apart from the loop, importing no torch, so the CLI builds its flags without it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from camlens.choices import EVAL_BATCH_HELP, NORMS, PADDINGS, option

__all__ = ["CUTOUT_FROM", "ZERO_INIT_BELOW", "RunError", "TrainConfig"]


# Budget rules (README, "The default recipe", measured at 5 epochs on CIFAR-10). Cutout
# regularises: it pays in long runs and costs accuracy in short ones; runs of CUTOUT_FROM
# epochs or more use it. Zero-init residual keeps layer and group norm learning (without it
# they lag far behind) and very short batch-norm runs from diverging, but costs batch norm
# accuracy in real runs; batch norm uses it only in runs of fewer than ZERO_INIT_BELOW steps.
CUTOUT_FROM = 20
ZERO_INIT_BELOW = 1000


@dataclass(frozen=True)
class TrainConfig:
    """The recipe of one run; the CLI builds its flags from these fields."""

    epochs: int = option(30, "passes over the training images")
    batch_size: int = option(128, "images per step (128 is fastest per image on 2 CPU cores)")
    lr: float = option(0.1, "peak learning rate of the one-cycle schedule")
    momentum: float = option(0.9, "SGD momentum (Nesterov), the centre of one-cycle's +-0.05 swing")
    weight_decay: float = option(5e-4, "L2 weight decay")
    decay_norms: bool = option(
        True, "weight decay on norm scales/shifts and biases too (off: conv/linear weights only)"
    )
    label_smoothing: float = option(0.1, "share of the target spread over the other classes")
    warmup: float = option(0.25, "share of the steps spent rising to the peak learning rate")
    norm: str = option("batch", "normalisation layers", choices=NORMS)
    width: int = option(64, "channels of the first stage (64 is the standard ResNet18)")
    zero_init_residual: bool | None = option(
        None,
        "start each residual block as the identity",
        auto=f"on for layer and group norm; for batch norm only in runs of fewer than "
        f"{ZERO_INIT_BELOW} steps (epochs x images / batch size), where it stops the first "
        "steps from diverging",
    )
    seed: int = option(0, "seed for initialisation, order and augmentation")
    subset: int | None = option(None, "train on the first N images (balanced across classes)")
    crop: bool = option(True, "random crop with 4-pixel padding")
    padding: str = option(
        "zeros",
        "what --crop pads with: zeros (black, the seed's) or reflect (the image mirrored)",
        choices=PADDINGS,
    )
    flip: bool = option(True, "random horizontal flip")
    cutout: bool | None = option(  # None: decided by `decided` when the run starts
        None,
        "8x8 cutout",
        auto=f"on for runs of {CUTOUT_FROM} epochs or more, off for shorter ones, where it "
        "costs accuracy",
    )
    precision: str = option(
        "auto",
        "auto: bf16 autocast where it is faster (GPUs, CPUs with AMX), else fp32",
        choices=("auto", "bf16", "fp32"),
    )
    channels_last: bool = option(True, "channels-last memory format (faster convolutions)")
    eval_batch_size: int = option(64, EVAL_BATCH_HELP)
    keep_every: int = option(
        0,
        "also keep every K-th epoch's weights in OUT/epochs/ (fp16: about 22 MB each at "
        "width 64) for `camlens explain --over-epochs`; 0 keeps none",
    )
    sync_bn: bool = option(
        False, "under torchrun on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)"
    )

    def decided(self, steps: int, saved: dict[str, Any] | None = None) -> TrainConfig:
        """This recipe with each None (auto) setting decided for a run of `steps` steps.

        A resumed run keeps what its `saved` config decided at its start, so the rules may
        change between camlens versions without stopping a run half way.
        """
        rules = {
            "cutout": self.epochs >= CUTOUT_FROM,
            "zero_init_residual": self.norm != "batch" or steps < ZERO_INIT_BELOW,
        }
        chosen = {
            name: (saved or {}).get(name, rule)
            for name, rule in rules.items()
            if getattr(self, name) is None
        }
        return replace(self, **chosen)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "width", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.keep_every < 0:
            raise ValueError(f"keep_every must be 0 (none) or more, got {self.keep_every}")
        if self.subset is not None and self.subset < 2:
            raise ValueError(f"subset must be at least 2 images, got {self.subset}")
        if not 0.05 <= self.momentum <= 0.95:
            raise ValueError(f"momentum must lie between 0.05 and 0.95, got {self.momentum}")
        if not 0 < self.warmup < 1:
            raise ValueError(f"warmup must lie between 0 and 1, got {self.warmup}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")


class RunError(RuntimeError):
    """A run folder that cannot be started or resumed as asked."""
