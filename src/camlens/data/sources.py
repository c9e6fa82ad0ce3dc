"""Readers that turn a data source into uint8 image tensors.

Three kinds of source, all ending as `(images (N, 3, S, S) uint8, labels (N,) int64)` per split:
the official CIFAR-10 python batches (a folder or the `.tar.gz`), an image-folder tree
`ROOT/{train,test}/<class>/*.png|jpg|jpeg`, or a `.tar.gz` of such a tree. Archives are read
in memory, never extracted, so a hostile member name cannot write anywhere.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import tarfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
BATCHES_DIR = "cifar-10-batches-py"


class DataError(ValueError):
    """A data source that cannot be read as it is; the message says what to change."""


@dataclass(frozen=True)
class RawSplit:
    """One split straight from a source: `images` (N, S, S, 3) uint8 numpy, `labels` (N,)."""

    images: np.ndarray
    labels: np.ndarray


# ----------------------------------------------------------------------------- decoding


def decode_image(data: bytes, name: str, size: int) -> np.ndarray:
    """One encoded image -> (size, size, 3) uint8; any mode becomes RGB, any size is resized."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("P", "PA") and "transparency" in img.info:
                img = img.convert("RGBA")  # palette transparency only survives via RGBA
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {name}: {e}; delete or replace that file") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8)


def _decode_chunk(args: tuple[list[tuple[str, bytes]], int]) -> np.ndarray:
    items, size = args
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, (name, data) in enumerate(items):
        out[i] = decode_image(data, name, size)
    return out


def decode_all(
    items: list[tuple[str, bytes]], size: int, workers: int | None = None, progress=None
) -> np.ndarray:
    """Decode many small images in worker processes: 32 px JPEGs are Python-bound, not I/O-bound."""
    if not items:
        return np.empty((0, size, size, 3), dtype=np.uint8)
    workers = workers or os.cpu_count() or 1
    chunk = 2000
    chunks = [(items[i : i + chunk], size) for i in range(0, len(items), chunk)]
    parts: list[np.ndarray] = []
    if workers == 1 or len(chunks) == 1:
        for c in chunks:
            parts.append(_decode_chunk(c))
            if progress is not None:
                progress.update(len(c[0]))
    else:
        # fork: children only run PIL, and spawning would re-import torch in each of them
        ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for c, part in zip(chunks, pool.map(_decode_chunk, chunks), strict=False):
                parts.append(part)
                if progress is not None:
                    progress.update(len(c[0]))
    return np.concatenate(parts)


# ----------------------------------------------------------------------------- image folders


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not Path(name).name.startswith(".")


@dataclass
class FolderListing:
    """What an image-folder tree holds: per split, class -> sorted image names."""

    root: str
    splits: dict[str, dict[str, list[str]]]

    def classes(self) -> list[str]:
        train, test = (sorted(self.splits[s]) for s in SPLITS)
        if train != test:
            only = sorted(set(train) ^ set(test))
            raise DataError(
                f"{self.root}: train and test have different class folders ({', '.join(only)}); "
                "give both splits the same classes"
            )
        return train

    def check(self) -> None:
        for split in SPLITS:
            classes = self.splits.get(split)
            where = f"{self.root}/{split}"
            if classes is None:
                raise DataError(
                    f"{where} not found: an image-folder dataset needs train/ and test/"
                )
            if not classes:
                raise DataError(f"{where} has no class folders: put images in {where}/<class>/")
            for cls, names in classes.items():
                if not names:
                    raise DataError(
                        f"class folder {where}/{cls} holds no .png/.jpg/.jpeg images: "
                        "add images or remove the folder"
                    )


def list_folder(root: Path) -> FolderListing:
    splits: dict[str, dict[str, list[str]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        splits[split] = {
            d.name: sorted(str(f) for f in d.iterdir() if f.is_file() and _is_image(f.name))
            for d in sorted(split_dir.iterdir())
            if d.is_dir() and not d.name.startswith(".")
        }
    listing = FolderListing(str(root), splits)
    listing.check()
    return listing


def list_archive(members: Iterable[tarfile.TarInfo], archive: Path) -> FolderListing:
    """Find `PREFIX/{train,test}/<class>/<file>` in an archive (PREFIX: empty or one path)."""
    splits: dict[str, dict[str, list[str]]] = {}
    prefixes: set[tuple[str, ...]] = set()
    for m in members:
        parts = tuple(p for p in m.name.split("/") if p not in ("", "."))
        for i, part in enumerate(parts):
            if part not in SPLITS or len(parts) - i not in (2, 3):
                continue
            if m.isdir() and len(parts) - i == 2:
                splits.setdefault(part, {}).setdefault(parts[i + 1], [])
                prefixes.add(parts[:i])
            elif m.isfile() and len(parts) - i == 3 and _is_image(parts[-1]):
                splits.setdefault(part, {}).setdefault(parts[i + 1], []).append(m.name)
                prefixes.add(parts[:i])
            break
    if len(prefixes) > 1:
        raise DataError(f"{archive} holds several dataset roots: pack one train/ and test/ tree")
    prefix = "/".join(next(iter(prefixes), ()))
    listing = FolderListing(f"{archive}:{prefix or '.'}", splits)
    listing.check()
    for classes in splits.values():
        for names in classes.values():
            names.sort()
    return listing


def read_folder_split(
    listing: FolderListing, split: str, classes: list[str], read, size: int, progress=None
) -> RawSplit:
    items, labels = [], []
    for label, cls in enumerate(classes):
        for name in listing.splits[split][cls]:
            items.append((name, read(name)))
            labels.append(label)
    images = decode_all(items, size, progress=progress)
    return RawSplit(images, np.asarray(labels, dtype=np.int64))


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
