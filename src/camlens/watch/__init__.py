"""Maps across training in any loop: what `camlens explain --over-epochs` shows, for your model.

    watch = camlens.Watch(model, test_data, "runs/mine", every=5)
    for epoch in range(1, epochs + 1):
        ...                                        # your training
        watch.epoch(epoch)                         # keeps every 5th epoch's weights
    watch.finish()                                 # OUT/over-epochs.png and .json

With PyTorch Lightning (`pip install 'camlens[lightning]'`), the same as a Callback:
`Trainer(callbacks=[camlens.watch.WatchCallback(test_data, "runs/mine", every=5)])`.

    core.py       Watch, WatchConfig: keep weights, then explain the final mistakes per epoch
    guard.py      untouched(model): train/eval modes, RNG states and gradients as they were
    lightning.py  WatchCallback (imports Lightning; loaded only when asked for)
"""

from typing import Any

from camlens.watch.core import Watch, WatchConfig, WatchError
from camlens.watch.guard import untouched

__all__ = ["Watch", "WatchConfig", "WatchError", "WatchCallback", "untouched"]


def __getattr__(name: str) -> Any:
    if name == "WatchCallback":  # Lightning is an optional extra: imported on first use only
        from camlens.watch.lightning import WatchCallback

        return WatchCallback
    raise AttributeError(f"module 'camlens.watch' has no attribute {name!r}")
