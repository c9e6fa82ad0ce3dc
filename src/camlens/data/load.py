"""`load_dataset`: which reader a source needs, then the reader, through the pixel cache.

Archives (the official CIFAR-10 download included) are read whole into memory and never
extracted, and only their regular files under plain relative names are read: a link, a device,
an absolute or a `..` name is skipped, so a hostile member can neither write anywhere nor stand
in for a batch file.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from camlens.data.cache import cache_dir, folder_fingerprint, load_cache, save_cache
from camlens.data.dataset import Dataset, Split
from camlens.data.sample import SAMPLE_PATH, load_sample
from camlens.data.sources import (
    BATCH_FILES,
    BATCHES_DIR,
    DataError,
    batch_classes,
    batches_to_split,
    list_archive,
    list_folder,
    load_batch,
    read_folder_split,
)
from camlens.download import default_home, fetch_cifar10, file_digest

__all__ = ["load_dataset", "read_source", "resolve"]


def open_archive(path: Path) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    """The whole tar in memory (random access to 60,000 members without re-inflating gzip),
    and the members a reader may take: regular files and folders under plain relative names."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        tar = tarfile.TarFile(fileobj=io.BytesIO(raw))  # in memory: nothing to close
        members = tar.getmembers()
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(f"cannot read archive {path}: {e}") from None
    return tar, [m for m in members if (m.isfile() or m.isdir()) and not _escapes(m.name)]


def _escapes(name: str) -> bool:
    return posixpath.isabs(name) or name.startswith("\\") or ".." in name.split("/")


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


def read_source(kind: str, path: Path, size: int, progress: bool) -> tuple[dict, list[str]]:
    """Decode a resolved source: ({split: RawSplit}, classes)."""
    if kind == "batches":
        names = {p.name for p in path.iterdir()}
        return _read_official(lambda n: (path / n).read_bytes(), names, str(path), size)
    if kind == "folder":
        listing = list_folder(path)

        def read(name: str) -> bytes:
            return Path(name).read_bytes()

    else:
        tar, members = open_archive(path)
        official = {
            m.name.rsplit("/", 1)[-1]: m
            for m in members
            if m.isfile() and m.name.split("/")[-2:-1] == [BATCHES_DIR]
        }
        if official.keys() & {*BATCH_FILES["train"], *BATCH_FILES["test"]}:
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
        return "archive", fetch_cifar10(home)
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
    checksum = file_digest(path) if path.is_file() else folder_fingerprint(path)
    where = cache_dir(home, kind, checksum, image_size)
    cached = load_cache(where) if cache else None
    if cached is None:
        raw, classes = read_source(kind, path, image_size, progress)
        if cache:
            save_cache(where, raw, classes, {"source": str(path), "checksum": checksum})
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
