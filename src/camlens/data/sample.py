"""The bundled sample: a few test images per class in one small safetensors file.

It lets the demo, the notebook and the tests run without downloading CIFAR-10.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from camlens.atomic import atomic_save_tensors
from camlens.data.dataset import Dataset, Split
from camlens.data.sources import DataError
from camlens.data.transforms import balanced_subset
from camlens.download import file_digest

__all__ = ["SAMPLE_PATH", "load_sample", "save_sample"]

SAMPLE_PATH = (
    Path(__file__).resolve().parent.parent / "assets" / "cifar10-jpeg-test-sample.safetensors"
)


def save_sample(data: Dataset, path: str | Path, per_class: int = 100, label: str = "") -> Path:
    """The first `per_class` test images of each class as one small safetensors file."""
    idx = balanced_subset(data.test.labels, per_class * len(data.classes))
    tensors = {
        "images": data.test.images[idx].contiguous(),
        "labels": data.test.labels[idx].contiguous(),
        "indices": idx.contiguous(),  # positions in the full test split
    }
    meta = {
        "classes": json.dumps(list(data.classes)),
        "source": data.source,
        "label": label,
        "checksum": data.checksum,
    }
    atomic_save_tensors(Path(path), tensors, meta)
    return Path(path)


def load_sample(path: str | Path = SAMPLE_PATH) -> Dataset:
    """A sample file as a Dataset with an empty train split."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            images, labels = f.get_tensor("images"), f.get_tensor("labels")
        classes = tuple(json.loads(meta["classes"]))
    except (OSError, SafetensorError, KeyError, ValueError) as e:
        raise DataError(
            f"{path} is not a camlens sample file ({type(e).__name__}: {e}); "
            "pass it to --checkpoint if it is a model"
        ) from None
    name = meta.get("label") or str(path)
    return Dataset(
        Split(images[:0], labels[:0]), Split(images, labels), classes, name, file_digest(path)
    )
