"""Data sources -> uint8 tensors, decoded once and cached on disk.

`load_dataset(source)` takes what the CLI's `--data` takes:
  - `cifar10`: the official python batches in `$CAMLENS_HOME` (default ~/.cache/camlens),
    downloaded and checked there when absent;
  - a folder holding `cifar-10-batches-py/` (or that folder itself), or the official
    `cifar-10-python.tar.gz`;
  - an image-folder tree `ROOT/{train,test}/<class>/*.png|jpg|jpeg` or a `.tar.gz` of one;
  - `sample`: the 1,000 test images bundled with camlens (100 per class, no train split), or
    any sample file written by `save_sample`.
The decoded pixels are cached under `$CAMLENS_HOME/cache`, keyed by the source's checksum and
the image size, so the second load of 60,000 images reads two .npy files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from camlens.atomic import atomic_save_tensors
from camlens.data.sources import (
    BATCH_FILES,
    BATCHES_DIR,
    DataError,
    RawSplit,
    batch_classes,
    batches_to_split,
    list_archive,
    list_folder,
    load_batch,
    read_folder_split,
)
from camlens.data.transforms import augment, balanced_subset, channel_stats
from camlens.download import default_home, fetch_cifar10

__all__ = [
    "DataError",
    "Dataset",
    "Split",
    "load_dataset",
    "augment",
    "balanced_subset",
    "channel_stats",
    "default_home",
    "save_sample",
    "SAMPLE_PATH",
]

SAMPLE_PATH = (
    Path(__file__).resolve().parent.parent / "assets" / "cifar10-jpeg-test-sample.safetensors"
)

CACHE_VERSION = "1"
# sources whose accuracy must carry a name of their own (shared/data/README: a JPEG re-encoding)
KNOWN_SOURCES = {
    "ff26949c34c4e67da3fa472a1f142e33365dea058f94f1fa369b14ef3d986968": "CIFAR-10 (JPEG q75)",
}


@dataclass(frozen=True)
class Split:
    """`images` (N, 3, S, S) uint8 and `labels` (N,) int64 of one split."""

    images: torch.Tensor
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
        if Path(self.source).name == BATCHES_DIR:
            return "CIFAR-10"
        return self.source


# ----------------------------------------------------------------------------- fingerprints


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


# ----------------------------------------------------------------------------- reading


def _read_archive_bytes(path: Path) -> tarfile.TarFile:
    """The whole tar in memory: random access to 60,000 members without re-inflating gzip."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(f"cannot read archive {path}: {e}") from None


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)


def _read_official(read, names: set[str], where: str, size: int) -> tuple[dict, list[str]]:
    missing = [
        n for n in [*BATCH_FILES["train"], *BATCH_FILES["test"], "batches.meta"] if n not in names
    ]
    if missing:
        raise DataError(
            f"{where} lacks {', '.join(missing)}: it is not a complete cifar-10-batches-py"
        )
    splits = {
        split: batches_to_split([load_batch(read(n), f"{where}/{n}") for n in files], size)
        for split, files in BATCH_FILES.items()
    }
    return splits, batch_classes(load_batch(read("batches.meta"), f"{where}/batches.meta"))


def _read_source(kind: str, path: Path, size: int, progress: bool) -> tuple[dict, list[str]]:
    if kind == "batches":
        names = {p.name for p in path.iterdir()}
        return _read_official(lambda n: (path / n).read_bytes(), names, str(path), size)
    if kind == "folder":
        listing = list_folder(path)

        def read(name: str) -> bytes:
            return Path(name).read_bytes()

    else:
        tar = _read_archive_bytes(path)
        members = tar.getmembers()
        official = {
            m.name.rsplit("/", 1)[-1]: m
            for m in members
            if m.isfile() and f"{BATCHES_DIR}/" in m.name
        }
        if "data_batch_1" in official:
            return _read_official(
                lambda n: tar.extractfile(official[n]).read(), set(official), str(path), size
            )
        listing = list_archive(members, path)
        by_name = {m.name: m for m in members}  # TarFile.getmember is a linear scan per call

        def read(name: str) -> bytes:
            return tar.extractfile(by_name[name]).read()

    classes = listing.classes()
    total = sum(len(v) for s in listing.splits.values() for v in s.values())
    with _bar(total, f"decoding {path.name}", progress) as bar:
        splits = {
            s: read_folder_split(listing, s, classes, read, size, bar) for s in ("train", "test")
        }
    return splits, classes


def resolve(source: str | Path, home: Path) -> tuple[str, Path]:
    """Which reader a `--data` value needs: ('batches' | 'folder' | 'archive', path)."""
    if str(source) == "cifar10":
        return "batches", fetch_cifar10(home)
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(
            f"data source {source} not found: pass `cifar10`, a folder with train/ and test/, "
            "a cifar-10-batches-py folder, or a .tar.gz of either"
        )
    if path.is_file():
        return "archive", path
    if (path / BATCHES_DIR).is_dir():
        return "batches", path / BATCHES_DIR
    if (path / "data_batch_1").is_file():
        return "batches", path
    if (path / "train").is_dir() or (path / "test").is_dir():
        return "folder", path
    raise DataError(
        f"{path} holds neither train/ and test/ class folders nor cifar-10-batches-py/: "
        "point --data at the folder that contains train/ and test/"
    )


# ----------------------------------------------------------------------------- cache


def _cache_dir(home: Path, kind: str, checksum: str, size: int) -> Path:
    return home / "cache" / f"{kind}-{checksum[:20]}-{size}px-v{CACHE_VERSION}"


def _save_cache(where: Path, splits: dict[str, RawSplit], classes: list[str], meta: dict) -> None:
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


def _load_cache(where: Path) -> tuple[dict[str, Split], list[str]] | None:
    try:
        meta = json.loads((where / "meta.json").read_text())
        splits = {
            s: Split(
                torch.from_numpy(np.load(where / f"{s}_images.npy")),
                torch.from_numpy(np.load(where / f"{s}_labels.npy")),
            )
            for s in ("train", "test")
        }
    except (OSError, ValueError):
        return None
    return splits, meta["classes"]


def load_dataset(
    source: str | Path,
    image_size: int = 32,
    home: str | Path | None = None,
    progress: bool = True,
    cache: bool = True,
) -> Dataset:
    """Read a data source (see the module docstring) into uint8 tensors, through the cache."""
    if image_size < 8:
        raise DataError(f"image size {image_size} is too small: use 8 or more (CIFAR is 32)")
    if str(source) == "sample" or str(source).endswith(".safetensors"):
        return load_sample(SAMPLE_PATH if str(source) == "sample" else source)
    home = Path(home) if home is not None else default_home()
    kind, path = resolve(source, home)
    checksum = file_sha256(path) if path.is_file() else folder_fingerprint(path)
    where = _cache_dir(home, kind, checksum, image_size)
    cached = _load_cache(where) if cache else None
    if cached is None:
        raw, classes = _read_source(kind, path, image_size, progress)
        if cache:
            _save_cache(where, raw, classes, {"source": str(path), "checksum": checksum})
        splits = {
            s: Split(
                torch.from_numpy(r.images).permute(0, 3, 1, 2).contiguous(),
                torch.from_numpy(r.labels),
            )
            for s, r in raw.items()
        }
    else:
        splits, classes = cached
    return Dataset(splits["train"], splits["test"], tuple(classes), str(path), checksum)


# ----------------------------------------------------------------------------- bundled sample


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
        Split(images[:0], labels[:0]), Split(images, labels), classes, name, file_sha256(path)
    )
