"""`load_dataset`: which reader a source needs, then an index of it (or the CIFAR batches).

An image folder or a tar of one is indexed, not read: each split's images are an
`ImageStore` that decodes the rows asked for. A compressed archive is inflated once into the
cache (gzip cannot seek), then each image is one `pread` at its member's offset; only regular
files under plain relative names are taken, so a hostile member (a link, a device, an absolute
or a `..` name) can neither write anywhere nor stand in for an image or a batch file. The
official CIFAR-10 batches are decoded whole (180 MB) and cached as .npy files, memory-mapped.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from camlens.data.cache import cache_dir, folder_fingerprint, load_cache, save_cache
from camlens.data.dataset import Dataset, Split
from camlens.data.decode import Preprocess
from camlens.data.index import (
    SourceIndex,
    SplitIndex,
    index_folder,
    index_tar,
    is_image,
    tar_members,
)
from camlens.data.names import class_names
from camlens.data.sample import SAMPLE_PATH, load_sample
from camlens.data.sources import (
    BATCH_FILES,
    BATCHES_DIR,
    DataError,
    batch_classes,
    batches_to_split,
    load_batch,
)
from camlens.data.store import FileImages
from camlens.distributed import is_writer
from camlens.download import default_home, fetch_cifar10, file_digest

__all__ = ["first_image", "load_dataset", "resolve"]

INDEX_VERSION = "2"
SKIPPED_SHOWN = 10  # lines naming skipped files; the rest are counted in one more
# a split whose pixels fit in this is decoded once and kept (CIFAR-10's train split: 154 MB;
# 1,700 photos at 224 px); a larger one is decoded at each pass, not written to disk
KEEP_BYTES = 256 << 20
_OPENERS = {b"\x1f\x8b": gzip.open, b"BZ": bz2.open, b"\xfd7zXZ": lzma.open}


def _say(line: str) -> None:
    if is_writer():  # one rank says it under torchrun
        tqdm.write(line, file=sys.stderr)


def plain_tar(path: Path, checksum: str, home: Path) -> Path:
    """`path` itself if it is an uncompressed tar, else its inflation, made once in the cache."""
    with open(path, "rb") as f:
        magic = f.read(6)
    opener = next((o for m, o in _OPENERS.items() if magic.startswith(m)), None)
    if opener is None:
        return path
    target = home / "cache" / f"tar-{checksum[:20]}.tar"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with opener(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)  # streamed: the archive is never whole in memory
        os.replace(tmp, target)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataError(f"cannot read archive {path}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


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


def _official_in_tar(tar: Path, members) -> dict:
    """{batch file name: member} of a cifar-10-batches-py inside a tar, else {}."""
    official = {
        m.name.rsplit("/", 1)[-1]: m
        for m in members
        if m.isfile() and m.name.split("/")[-2:-1] == [BATCHES_DIR]
    }
    return official if official.keys() & {*BATCH_FILES["train"], *BATCH_FILES["test"]} else {}


def resolve(source: str | Path, home: Path) -> tuple[str, Path]:
    """Which reader a `--data` value needs: ('batches' | 'folder' | 'archive', path)."""
    if str(source) == "cifar10":
        return "archive", fetch_cifar10(home)
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(
            f"data source {source} not found: pass `cifar10`, a folder with test/ or val/ "
            "(and train/ to train), a cifar-10-batches-py folder, or a .tar.gz of either"
        )
    if path.is_file():
        return "archive", path
    if (path / BATCHES_DIR).is_dir():
        return "batches", path / BATCHES_DIR
    if (path / "data_batch_1").is_file():
        return "batches", path
    return "folder", path  # index_folder says what is missing, if anything


def first_image(root: Path) -> Path | None:
    """The first image of a folder's evaluated split (test/, val/, top-level class folders),
    by the index's order; None where `root` is no image folder. Nothing else is listed."""
    if not root.is_dir():
        return None
    for split in (root / "test", root / "val", root):
        if not split.is_dir():
            continue
        for cls in sorted(p for p in split.iterdir() if p.is_dir() and p.name != "train"):
            images = sorted(str(f) for f in cls.iterdir() if f.is_file() and is_image(f.name))
            if images:
                return Path(images[0])
    return None


def _read_index(where: Path) -> SourceIndex | None:
    try:
        return SourceIndex.from_json(json.loads(where.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_index(where: Path, index: SourceIndex) -> None:
    """Written to a temporary file then renamed, so a killed run never leaves half an index."""
    where.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=where.parent, prefix=f".{where.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(index.to_json(), f)
    os.replace(tmp, where)


def _store(split: SplitIndex, prep: Preprocess, tar: Path | None, keep: Path | None) -> Split:
    if keep is not None and len(split) * 3 * prep.crop**2 > KEEP_BYTES:
        keep = None  # ImageNet's 50,000 at 224 px (7.5 GB): decoded per pass, never kept
    images = FileImages(split.names, prep, tar, split.offsets, split.sizes, keep)
    return Split(images, torch.from_numpy(split.labels))


def _empty(size: int) -> Split:
    return Split(
        torch.empty(0, 3, size, size, dtype=torch.uint8, device="cpu"),
        torch.empty(0, dtype=torch.long, device="cpu"),
    )


def _from_index(
    index: SourceIndex, prep: Preprocess, tar: Path | None, keep: Path | None
) -> tuple[Split, Split]:
    """The splits of `index` as stores; `keep`: the folder where small splits keep their
    pixels after a first whole pass (None: never)."""
    for line in index.skipped[:SKIPPED_SHOWN]:
        _say(line)
    if len(index.skipped) > SKIPPED_SHOWN:
        _say(f"data: {len(index.skipped) - SKIPPED_SHOWN} more files skipped, unreadable")
    if index.used != "test" or index.train is None:  # train/ + test/ needs no word: as ever
        _say(index.said())
    if len(index.test) == 0:
        raise DataError(f"{index.root}: no readable image to evaluate on")

    def kept(split: str) -> Path | None:
        return None if keep is None else keep / f"{split}-{prep.key()}.u8"

    train = index.train
    train = _store(train, prep, tar, kept("train")) if train is not None else _empty(prep.crop)
    return train, _store(index.test, prep, tar, kept("test"))


def _official(kind: str, path: Path, tar: Path | None, members, size: int, home, key, cache):
    """The CIFAR batches' splits and classes, through the pixel cache (memory-mapped)."""
    where = cache_dir(home, kind, key, size)
    cached = load_cache(where) if cache else None
    if cached is not None:
        return cached
    if tar is None:
        names = {p.name for p in path.iterdir()}
        raw, classes = _read_official(lambda n: (path / n).read_bytes(), names, str(path), size)
    else:
        fd = os.open(tar, os.O_RDONLY)
        try:
            raw, classes = _read_official(
                lambda n: os.pread(fd, members[n].size, members[n].offset_data),
                set(members),
                str(path),
                size,
            )
        finally:
            os.close(fd)
    if cache:
        save_cache(where, raw, classes, {"source": str(path), "checksum": key})
        cached = load_cache(where)
        if cached is not None:
            return cached
    splits = {
        s: Split(
            torch.from_numpy(r.images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(r.labels)
        )  # (N, S, S, 3) -> (N, 3, S, S)
        for s, r in raw.items()
    }
    return splits, classes


def load_dataset(
    source: str | Path,
    image_size: int | None = 32,
    home: str | Path | None = None,
    progress: bool = True,
    cache: bool = True,
    preprocess: Preprocess | None = None,
    classes: str | Path | Sequence[str] | None = None,
    train: bool = False,
) -> Dataset:
    """A data source (see the package docstring) as a `Dataset` whose images stream.

    `preprocess`: how a photo becomes the model's pixels (resize the short side, centre-crop);
    None: `Preprocess(image_size)`, the short side resized to the size and the centre kept.
    `classes`: the class names, or a .txt/.json file of them (see `class_names`); None: the
    class folders' names. `progress`: bars while an archive is indexed. `train`: the train
    split is to be trained on: its files' headers are read too, and those that are no image
    left out (said in one line each), as the evaluated split's always are.
    """
    prep = preprocess or Preprocess(32 if image_size is None else image_size)
    if str(source) == "sample" or str(source).endswith(".safetensors"):
        data = load_sample(SAMPLE_PATH if str(source) == "sample" else source)
        return _named(data, classes)
    home = Path(home) if home is not None else default_home()
    kind, path = resolve(source, home)
    checksum = file_digest(path) if path.is_file() else folder_fingerprint(path)
    tar = plain_tar(path, checksum, home) if kind == "archive" else None
    key = hashlib.sha256(f"{checksum}\0{path}\0{tar}".encode()).hexdigest()
    where = home / "cache" / f"index-{key[:20]}-v{INDEX_VERSION}.json"
    index = _read_index(where) if cache and kind != "batches" else None
    if index is not None and train and index.train is not None and not index.train_checked:
        index = None  # listed to evaluate; to train, train/'s headers are read too
    members = {}
    listed = []
    if index is None and tar is not None:  # an image tree, or the official batches?
        listed = tar_members(tar)
        members = _official_in_tar(tar, listed)
    if kind == "batches" or members:
        splits, folders = _official(kind, path, tar, members, prep.crop, home, checksum, cache)
        train, test = splits["train"], splits["test"]
    else:
        if index is None:
            with tqdm(total=0, desc=f"indexing {path.name}", disable=not progress, leave=False):
                if tar is None:
                    index = index_folder(path, train)
                else:
                    index = index_tar(listed, tar, str(path), train)
            if cache:
                _write_index(where, index)
        train, test = _from_index(index, prep, tar, where.with_suffix("") if cache else None)
        folders = index.classes
    names = class_names(classes, folders) if classes is not None else tuple(folders)
    return Dataset(train, test, tuple(names), str(path), checksum)


def _named(data: Dataset, classes) -> Dataset:
    if classes is None:
        return data
    names = class_names(classes, data.classes)
    return Dataset(data.train, data.test, names, data.source, data.checksum)
