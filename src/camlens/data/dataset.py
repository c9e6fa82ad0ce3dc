"""`Split` and `Dataset`: what every reader, the cache and the sample file hand back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from camlens.data.sources import BATCHES_DIR
from camlens.data.store import ImageStore
from camlens.download import ARCHIVE_NAME

__all__ = ["KNOWN_SOURCES", "Dataset", "Split"]

# sources whose accuracy must carry a name of their own (shared/data/README: a JPEG re-encoding)
KNOWN_SOURCES = {
    "ff26949c34c4e67da3fa472a1f142e33365dea058f94f1fa369b14ef3d986968": "CIFAR-10 (JPEG q75)",
}


@dataclass(frozen=True)
class Split:
    """`images` (N, 3, S, S) uint8 and `labels` (N,) int64 of one split.

    `images` is a tensor, or an `ImageStore` that reads only the rows indexed (an image folder,
    a tar, the memory-mapped cache): index it, take its len and shape, and walk a whole split
    with `evaluate.predict` (or `images.batches`), never with `.float()` on all of it.
    """

    images: torch.Tensor | ImageStore
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    classes: tuple[str, ...]
    source: str  # what was passed as --data, resolved to an absolute path where it is one
    checksum: str  # sha256 of the source archive, or of a folder's file list, sizes and times

    @property
    def image_size(self) -> int:
        return int(self.test.images.shape[-1])

    @property
    def label(self) -> str:
        """How results on this data are to be named: "CIFAR-10 (JPEG q75)", or the source."""
        if self.checksum in KNOWN_SOURCES:
            return KNOWN_SOURCES[self.checksum]
        if Path(self.source).name in (BATCHES_DIR, ARCHIVE_NAME):
            return "CIFAR-10"
        return self.source
