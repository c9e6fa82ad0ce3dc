"""The decoded-pixel cache: keyed by the source's fingerprint, so a changed source misses it.

The CIFAR batches are decoded once; later loads map one .npy file per split (np.load's
mmap_mode: the header is read, the pixels only as rows are asked for) instead of unpickling
60,000 images again. Image folders are not cached as pixels: they are indexed (load.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from camlens.data.dataset import Split
from camlens.data.sources import RawSplit
from camlens.data.store import MappedImages

__all__ = [
    "CACHE_VERSION",
    "cache_dir",
    "folder_fingerprint",
    "load_cache",
    "save_cache",
]

CACHE_VERSION = "2"


# ----------------------------------------------------------------------------- fingerprints


def folder_fingerprint(root: Path) -> str:
    """Hash of every file's relative path, size and mtime: cheap, and changes when a file does."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        for name in dirnames:  # an empty class folder must change the key too
            h.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}/\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- cache


def cache_dir(home: Path, kind: str, checksum: str, size: int) -> Path:
    """Where the pixels of one source at one image size are kept."""
    return home / "cache" / f"{kind}-{checksum[:20]}-{size}px-v{CACHE_VERSION}"


def save_cache(where: Path, splits: dict[str, RawSplit], classes: list[str], meta: dict) -> None:
    """Write to a temporary folder then rename it, so a killed run never leaves half a cache."""
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=f".{where.name}."))
    try:
        for split, raw in splits.items():
            images = np.ascontiguousarray(
                raw.images.transpose(0, 3, 1, 2)
            )  # (N,S,S,3) -> (N,3,S,S)
            np.save(tmp / f"{split}_images.npy", images)
            np.save(tmp / f"{split}_labels.npy", raw.labels)
        (tmp / "meta.json").write_text(json.dumps({**meta, "classes": classes}, indent=2))
        os.replace(tmp, where)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not where.is_dir():  # another process may have won the race; that is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_cache(where: Path) -> tuple[dict[str, Split], list[str]] | None:
    """The splits and classes `save_cache` wrote, or None where there is no complete cache."""
    try:
        meta = json.loads((where / "meta.json").read_text())
        splits = {}
        for s in ("train", "test"):
            mapped = np.load(where / f"{s}_images.npy", mmap_mode="r")  # header only: no pixels
            n, _, size, _ = mapped.shape
            images = MappedImages(where / f"{s}_images.npy", n, size, mapped.offset)
            del mapped
            splits[s] = Split(images, torch.from_numpy(np.load(where / f"{s}_labels.npy")))
    except (OSError, ValueError):
        return None
    return splits, meta["classes"]
