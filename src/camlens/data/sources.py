"""The official CIFAR-10 python batches -> uint8 arrays, and `DataError`.

Image folders are indexed (index.py) and decoded per row (store.py, decode.py); the batches
are one pickle per 10,000 32-px images, read whole (180 MB for all of CIFAR-10) and cached.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass

import numpy as np
from PIL import Image

BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
BATCHES_DIR = "cifar-10-batches-py"


class DataError(ValueError):
    """A data source that cannot be read as it is; the message says what to change."""


@dataclass(frozen=True)
class RawSplit:
    """One split straight from a source: `images` (N, S, S, 3) uint8 numpy, `labels` (N,)."""

    images: np.ndarray
    labels: np.ndarray


# ----------------------------------------------------------------------------- official batches


class _BatchUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles: allow numpy arrays and nothing that could run code."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2; it runs no code
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def load_batch(data: bytes, name: str) -> dict:
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise DataError(f"cannot read CIFAR batch {name}: {e}") from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR batch {name} is not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def batches_to_split(batches: list[dict], size: int) -> RawSplit:
    images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
    images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 3072) -> (N, 32, 32, 3)
    if size != 32:
        images = np.stack(
            [
                np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC))
                for im in images
            ]
        )
    return RawSplit(np.ascontiguousarray(images), labels)


def batch_classes(meta: dict) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
