"""Where `train --keep-every K` and `camlens.Watch` keep an epoch's weights, and how they are
read back: the one home of RUN/epochs/epoch-NNN.safetensors."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["EPOCHS_DIR", "epoch_stem", "kept_epochs"]

EPOCHS_DIR = "epochs"  # RUN/epochs/epoch-007.safetensors (+ .json from train)


def epoch_stem(run: str | Path, epoch: int) -> Path:
    """RUN/epochs/epoch-NNN, the path of epoch `epoch`'s weights without their suffix."""
    return Path(run) / EPOCHS_DIR / f"epoch-{epoch:03d}"


def kept_epochs(run: str | Path) -> list[tuple[int, Path]]:
    """(epoch, checkpoint) of RUN/epochs/epoch-NNN.safetensors, in order; [] when none."""
    found = []
    for path in sorted((Path(run) / EPOCHS_DIR).glob("epoch-*.safetensors")):
        match = re.fullmatch(r"epoch-(\d+)\.safetensors", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return found
