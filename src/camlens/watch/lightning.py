"""`WatchCallback`: a `Watch` as a PyTorch Lightning Callback (`pip install 'camlens[lightning]'`).

    trainer = Trainer(callbacks=[WatchCallback(test_data, "runs/mine", every=5)])

Epochs are counted from 1 (the number of epochs finished), as `camlens train` counts them.
Only the global rank 0 watches. The cards and strips go to the trainer's first TensorBoard or
W&B logger, when it has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise ImportError(
            "WatchCallback needs PyTorch Lightning: pip install 'camlens[lightning]'"
        ) from None

from camlens.watch.core import Watch

__all__ = ["WatchCallback"]


class WatchCallback(Callback):
    """Keep every `every`-th epoch's weights of the LightningModule (or of its attribute
    `module`, e.g. "model", when the classifier sits inside it) and, at the end of `fit`, write
    the final mistakes' maps epoch by epoch into `out`. Keywords: `Watch`'s."""

    def __init__(
        self, test_data: Any, out: str | Path, every: int = 5, module: str | None = None, **settings
    ) -> None:
        super().__init__()
        self.test_data, self.out, self.every = test_data, out, every
        self.module, self.settings = module, settings
        self.watch: Watch | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        model = getattr(pl_module, self.module) if self.module else pl_module
        loggers = [lg.experiment for lg in trainer.loggers if _is_image_logger(lg)]
        self.watch = Watch(
            model,
            self.test_data,
            self.out,
            self.every,
            logger=loggers[0] if loggers else None,
            **self.settings,
        )

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is not None:
            self.watch.epoch(trainer.current_epoch + 1)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is not None and self.watch.last_epoch is not None:
            self.watch.finish()


def _is_image_logger(logger: Any) -> bool:
    """A Lightning TensorBoardLogger or WandbLogger (by name: neither need be installed)."""
    return type(logger).__name__ in ("TensorBoardLogger", "WandbLogger")
