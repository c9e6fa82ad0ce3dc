"""Index an image folder or a tar of one: names, labels and byte offsets, nothing decoded.

A split is `ROOT/{train,test,val}/<class>/<image>` or, for a folder of one split, class
folders at the top: `ROOT/<class>/<image>`. Only the split evaluated on (`test/`, else `val/`,
else the top-level class folders) is required; `train/` is listed where it exists, for
training, and never opened otherwise. The images of the evaluated split have their headers
read (a few KB each, no pixels): a file that is no image is reported in one line with its
path and left out, and the job goes on. A tar is indexed by each member's data offset, so an
image is read with one `pread` and 50,000 photos never sit in memory together.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camlens.data.decode import check_header
from camlens.data.sources import DataError

__all__ = ["IMAGE_SUFFIXES", "SplitIndex", "SourceIndex", "index_folder", "index_tar"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
EVAL_SPLITS = ("test", "val")  # the first present is the one evaluated on
TOP = "."  # the split name of class folders at the top level
HEAD = 1 << 16  # bytes read to check a header: a JPEG's markers end well before this


@dataclass(frozen=True)
class SplitIndex:
    """One split's images in class order: where each is, and its label."""

    names: list[str]  # file paths (a folder) or member names (a tar)
    labels: np.ndarray  # (N,) int64
    offsets: np.ndarray | None = None  # (N,) int64 data offsets in the tar; None: files
    sizes: np.ndarray | None = None  # (N,) int64 member sizes in the tar

    def __len__(self) -> int:
        return len(self.names)

    def to_json(self) -> dict:
        out = {"names": self.names, "labels": self.labels.tolist()}
        if self.offsets is not None:
            out |= {"offsets": self.offsets.tolist(), "sizes": self.sizes.tolist()}
        return out

    @classmethod
    def from_json(cls, d: dict) -> SplitIndex:
        offsets, sizes = (
            np.asarray(d[k], dtype=np.int64) if k in d else None for k in ("offsets", "sizes")
        )
        return cls(d["names"], np.asarray(d["labels"], dtype=np.int64), offsets, sizes)


@dataclass(frozen=True)
class SourceIndex:
    """What an image-folder source holds, as listed once and cached by its fingerprint."""

    root: str  # the folder, or `archive.tar.gz:prefix`
    classes: list[str]  # the class folders, sorted: label k is classes[k]
    test: SplitIndex  # the split evaluated on
    train: SplitIndex | None  # train/, where there is one
    used: str  # which split `test` is: "test", "val" or "." (class folders at the top)
    skipped: list[str] = field(default_factory=list)  # one line per file left out
    train_checked: bool = False  # train's headers read too (to train), its bad files left out

    def said(self) -> str:
        """The one line that says which split is evaluated on."""
        where = "class folders at the top level" if self.used == TOP else f"{self.used}/"
        train = f"train/ ({len(self.train)} images) is read only to train" if self.train else ""
        return (
            f"data: {self.root}: evaluating on {where} ({len(self.test)} images, "
            f"{len(self.classes)} classes){'; ' + train if train else ''}"
        )

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "classes": self.classes,
            "test": self.test.to_json(),
            "train": None if self.train is None else self.train.to_json(),
            "used": self.used,
            "skipped": self.skipped,
            "train_checked": self.train_checked,
        }

    @classmethod
    def from_json(cls, d: dict) -> SourceIndex:
        train = None if d["train"] is None else SplitIndex.from_json(d["train"])
        test = SplitIndex.from_json(d["test"])
        checked = bool(d.get("train_checked"))
        return cls(d["root"], d["classes"], test, train, d["used"], d["skipped"], checked)


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not posixpath.basename(name).startswith(".")


# ----------------------------------------------------------------------------- layout


def _check(root: str, trees: dict[str, dict[str, list]]) -> tuple[str, list[str]]:
    """(the split evaluated on, the classes) of `trees` {split: {class: names}}, or DataError."""
    used = next((s for s in (*EVAL_SPLITS, TOP) if s in trees), None)
    if used is None:
        raise DataError(
            f"{root}/test not found: an image-folder dataset needs test/ or val/ (or class "
            "folders at the top level); train/ is needed only to train"
        )
    for split in ("train", used):
        if split not in trees:
            continue
        where = root if split == TOP else f"{root}/{split}"
        if not trees[split]:
            raise DataError(f"{where} has no class folders: put images in {where}/<class>/")
        for cls, names in trees[split].items():
            if not names:
                raise DataError(
                    f"class folder {where}/{cls} holds no images ({', '.join(IMAGE_SUFFIXES)}): "
                    "add images or remove the folder"
                )
    classes = sorted(trees[used])
    if "train" in trees and sorted(trees["train"]) != classes:
        only = sorted(set(trees["train"]) ^ set(classes))
        raise DataError(
            f"{root}: train and {used} have different class folders ({', '.join(only[:12])}): "
            "give both splits the same classes"
        )
    return used, classes


def _split(tree: dict[str, list], classes: list[str], offsets: dict | None = None) -> SplitIndex:
    names, labels = [], []
    for label, cls in enumerate(classes):
        names += sorted(tree[cls])
        labels += [label] * len(tree[cls])
    labels = np.asarray(labels, dtype=np.int64)
    if offsets is None:
        return SplitIndex(names, labels)
    where = np.asarray([offsets[n] for n in names], dtype=np.int64).reshape(-1, 2)  # (N, 2)
    return SplitIndex(names, labels, where[:, 0].copy(), where[:, 1].copy())


def _class_tree(folder: Path) -> dict[str, list[str]]:
    """{class: image paths} of `folder`'s class folders (os.scandir: no stat per file)."""
    tree = {}
    for d in sorted(os.scandir(folder), key=lambda e: e.name):
        if d.is_dir() and not d.name.startswith(".") and d.name not in ("train", *EVAL_SPLITS):
            tree[d.name] = [f.path for f in os.scandir(d.path) if f.is_file() and is_image(f.name)]
    return tree


def index_folder(root: Path, check_train: bool = False) -> SourceIndex:
    """`root`'s splits: {train,test,val}/<class>/ or class folders at the top level.
    `check_train`: read train/'s headers too (to train on it), not only the evaluated split's."""
    trees = {s: _class_tree(root / s) for s in ("train", *EVAL_SPLITS) if (root / s).is_dir()}
    if not any(s in trees for s in EVAL_SPLITS) and "train" not in trees:
        top = _class_tree(root)
        if top:
            trees[TOP] = top
    used, classes = _check(str(root), trees)
    train = _split(trees["train"], classes) if "train" in trees else None
    test, skipped = _readable(_split(trees[used], classes), _file_head)
    if check_train and train is not None:
        train, more = _readable(train, _file_head)
        skipped += more
    return SourceIndex(str(root), classes, test, train, used, skipped, check_train)


# ----------------------------------------------------------------------------- tar


def _escapes(name: str) -> bool:
    return posixpath.isabs(name) or name.startswith("\\") or ".." in name.split("/")


def tar_members(path: Path) -> list[tarfile.TarInfo]:
    """The members of an uncompressed tar a reader may take: regular files and folders under
    plain relative names (a link, a device, an absolute or a `..` name is left out)."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(f"cannot read archive {path}: {e}") from None
    return [
        m
        for m in members
        if (m.isdir() or (m.isfile() and not m.issparse())) and not _escapes(m.name)
    ]


def _where_in_tree(parts: tuple[str, ...]) -> tuple[tuple[str, ...], str, str] | None:
    """(prefix, split, class) of a file member's path parts, or None off the tree."""
    for i, part in enumerate(parts):
        if part in ("train", *EVAL_SPLITS) and len(parts) - i == 3:
            return parts[:i], part, parts[i + 1]
    return None


def index_tar(
    members: list[tarfile.TarInfo], tar: Path, label: str, check_train: bool = False
) -> SourceIndex:
    """Find `PREFIX/{train,test,val}/<class>/<file>`, else `PREFIX/<class>/<file>`, in a tar
    (PREFIX: empty or one path); `label` names the archive in messages."""
    files, dirs = [], []
    for m in members:
        parts = tuple(p for p in m.name.split("/") if p not in ("", "."))
        (files if m.isfile() else dirs).append((parts, m))
    images = [(p, m) for p, m in files if is_image(p[-1])]
    placed = [(_where_in_tree(p), m) for p, m in images]
    if not any(w is not None for w, _ in placed):  # no split folders: classes at the top
        placed = [((p[:-2], TOP, p[-2]), m) for p, m in images if len(p) >= 2]
    trees: dict[str, dict[str, list[str]]] = {}
    prefixes, offsets = set(), {}
    for where, m in placed:
        if where is None:
            continue
        prefix, split, cls = where
        trees.setdefault(split, {}).setdefault(cls, []).append(m.name)
        prefixes.add(prefix)
        offsets[m.name] = (m.offset_data, m.size)
    for parts, _ in dirs:  # an empty class folder must be named, as in a folder
        where = _where_in_tree((*parts, "-"))
        if where is not None and where[0] in prefixes | ({()} if not prefixes else set()):
            trees.setdefault(where[1], {}).setdefault(where[2], [])
    if len(prefixes) > 1:
        raise DataError(f"{label} holds several dataset roots: pack one tree of class folders")
    root = f"{label}:{'/'.join(next(iter(prefixes), ())) or '.'}"
    used, classes = _check(root, trees)
    train = _split(trees["train"], classes, offsets) if "train" in trees else None
    fd = os.open(tar, os.O_RDONLY)
    try:

        def head(split: SplitIndex, i: int, limit: int | None) -> bytes:
            return _tar_head(fd, split, i, limit)

        test, skipped = _readable(_split(trees[used], classes, offsets), head)
        if check_train and train is not None:
            train, more = _readable(train, head)
            skipped += more
    finally:
        os.close(fd)
    return SourceIndex(root, classes, test, train, used, skipped, check_train)


# ----------------------------------------------------------------------------- headers


def _file_head(split: SplitIndex, i: int, limit: int | None) -> bytes:
    with open(split.names[i], "rb") as f:
        return f.read(-1 if limit is None else limit)


def _tar_head(fd: int, split: SplitIndex, i: int, limit: int | None) -> bytes:
    size = int(split.sizes[i])
    return os.pread(fd, size if limit is None else min(size, limit), int(split.offsets[i]))


def _readable(split: SplitIndex, head) -> tuple[SplitIndex, list[str]]:
    """`split` without the files PIL cannot open, and one line per file left out.

    `head(split, i, limit)`: the first `limit` bytes of image i (None: all of them)."""
    bad, lines = [], []
    for i in range(len(split)):
        data = head(split, i, HEAD)
        why = check_header(data, split.names[i])
        if why is not None and len(data) == HEAD:  # a header longer than HEAD: read it all
            why = check_header(head(split, i, None), split.names[i])
        if why is not None:
            bad.append(i)
            lines.append(f"data: skipped {why}")
    if not bad:
        return split, []
    keep = np.setdiff1d(np.arange(len(split)), np.asarray(bad))
    offsets = None if split.offsets is None else split.offsets[keep]
    sizes = None if split.sizes is None else split.sizes[keep]
    names = [split.names[i] for i in keep.tolist()]
    return SplitIndex(names, split.labels[keep], offsets, sizes), lines
