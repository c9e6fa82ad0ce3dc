"""Class names from a file: the folders are `n01440764`, the report says "tench".

    names.txt        one name per line, in label order (the sorted class folders')
    names.json       ["tench", ...]; {"0": "tench", ...}; {"n01440764": "tench", ...};
                     or ImageNet's imagenet_class_index.json {"0": ["n01440764", "tench"], ...}

A JSON keyed by the folder names maps each folder; one keyed by index (or a list, or a text
file) gives label k the k-th name, and must name every class.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from camlens.data.sources import DataError

__all__ = ["class_names"]


def _by_index(values: list, folders: Sequence[str], path: Path) -> list[str]:
    if len(values) != len(folders):
        raise DataError(
            f"{path} names {len(values)} classes but the data has {len(folders)} class "
            "folders: give one name per class, in the sorted folders' order"
        )
    # ImageNet's index file: [wnid, name] per class, and the folders are the wnids
    pairs = [v for v in values if isinstance(v, (list, tuple)) and len(v) == 2]
    if len(pairs) == len(values):
        by_folder = {str(w): str(n) for w, n in pairs}
        if set(by_folder) == set(folders):
            return [by_folder[f] for f in folders]
        return [str(n) for _, n in pairs]
    return [str(v) for v in values]


def _from_json(data, folders: Sequence[str], path: Path) -> list[str]:
    if isinstance(data, list):
        return _by_index(data, folders, path)
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a {type(data).__name__}: give a list or a dict of names")
    if set(map(str, data)) >= set(folders):  # keyed by folder (wnid -> name)
        return [str(data[f]) for f in folders]
    try:
        ordered = sorted(data.items(), key=lambda kv: int(kv[0]))
    except ValueError:
        missing = sorted(set(folders) - set(map(str, data)))
        raise DataError(
            f"{path} lacks the class folders {', '.join(missing[:5])}: key it by every folder "
            "name or by index 0..K-1"
        ) from None
    if [int(k) for k, _ in ordered] != list(range(len(ordered))):
        raise DataError(f"{path} is keyed by index but not by 0..{len(ordered) - 1}")
    return _by_index([v for _, v in ordered], folders, path)


def class_names(source: str | Path | Sequence[str], folders: Sequence[str]) -> tuple[str, ...]:
    """The names of the classes whose folders (or default names) are `folders`, in order.

    `source`: a .txt or .json file (see the module docstring), or the names themselves."""
    if not isinstance(source, (str, Path)):
        return tuple(_by_index(list(source), folders, Path("the names given")))
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read class names from {path}: {e.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not JSON ({e.msg}, line {e.lineno})") from None
        names = _from_json(data, folders, path)
    else:
        names = _by_index([line.strip() for line in text.strip().splitlines()], folders, path)
    return tuple(names)
