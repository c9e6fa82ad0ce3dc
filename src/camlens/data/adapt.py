"""The user's own test data, adapted: batches of [0, 1] images and labels, streamed.

    data = from_user_data(loader)                # a DataLoader, Dataset, arrays, camlens Dataset
    for images, labels in data: ...              # (B, 3, H, W) float in [0, 1], (B,) int64
    dataset = as_dataset(loader)                 # the same as a camlens Dataset (uint8, on disk)

What comes in: a torch `Dataset` (items `(image, label)`) or `DataLoader` (batches of them),
images normalised or not; numpy arrays or tensors `(images, labels)`; a camlens `Dataset` or
`Split`. The normalisation is `mean=`/`std=` when given, else the torchvision-style `Normalize`
the dataset applies itself (see `dataset_normalization`; duck-typed, so camlens never imports
torchvision), said in one printed line; images normalised anywhere else (a `TensorDataset` of
normalised tensors, a `collate_fn`) are an error naming `mean=`/`std=`. Class names are
`classes=` when given, else the dataset's own `classes`.

Nothing is held whole: each pass reads the source again batch by batch (user.py), and
`as_dataset` writes the batches' uint8 pixels to a file as they pass and maps it: never joined.

    adapt.py       from_user_data, as_dataset (the entry points)
    user.py        UserData: the batches, each checked as it is read
    normalize.py   the Normalize a dataset applies, read from its transform
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from camlens.data.dataset import Dataset, Split
from camlens.data.normalize import dataset_normalization, rounded, triple
from camlens.data.sources import DataError
from camlens.data.store import MappedImages
from camlens.data.user import UserData, as_tensor, innermost, is_array
from camlens.distributed import is_writer
from camlens.download import default_home

__all__ = ["as_dataset", "from_user_data"]


def _described(data: Any) -> tuple[Any, str]:
    """(`data` as UserData reads it, what the report calls it), or a DataError naming the fix."""
    if isinstance(data, (list, tuple)) and len(data) == 2 and is_array(data[0]):
        data = (as_tensor(data[0]), as_tensor(data[1]))
        if data[0].shape[0] != data[1].shape[0]:
            raise DataError(
                f"{data[0].shape[0]} images but {data[1].shape[0]} labels: pass one label per image"
            )
        return data, f"arrays of {data[0].shape[0]} images"
    if is_array(data):
        raise DataError("images without labels: pass from_user_data(images, labels)")
    if isinstance(data, Split):
        return data, f"a split of {len(data)} images"
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise DataError(
                "the DataLoader shuffles (shuffle=True): mistakes are found by position over "
                "several passes, so pass one with shuffle=False"
            )
        if data.drop_last:
            raise DataError("the DataLoader has drop_last=True: pass drop_last=False")
        return data, f"a DataLoader over {type(innermost(data.dataset)).__name__}"
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data, f"a {type(innermost(data)).__name__} of {len(data)} images"
    if hasattr(data, "__next__"):
        raise DataError(
            f"a {type(data).__name__} can be read once, and camlens reads the test data "
            "several times: pass a DataLoader or a Dataset"
        )
    raise DataError(
        f"cannot read test data from a {type(data).__name__}: pass a DataLoader, a torch "
        "Dataset, (images, labels) arrays or a camlens Dataset"
    )


def _class_names(data: Any, classes: Sequence[str] | int | None, description: str):
    if classes is None:
        inner = innermost(data.dataset if isinstance(data, DataLoader) else data)
        classes = getattr(inner, "classes", None)
        if classes is None:
            raise DataError(
                f"{description} has no `classes`: pass classes=[names] (or their number)"
            )
    if isinstance(classes, int):
        classes = [str(k) for k in range(classes)]
    return tuple(str(c) for c in classes)


def _normalization(data: Any, mean, std):
    """(mean, std) the images carry: given, else read from the dataset's Normalize (said in
    one line, as the user never named it), else (None, None)."""
    if (mean is None) != (std is None):
        raise DataError("pass mean= and std= together (the normalisation of the images)")
    if mean is not None:
        mean, std = triple(mean), triple(std)
        if min(std) <= 0:
            raise DataError(f"std must be positive, got {std}")
        return mean, std
    if isinstance(data, (tuple, Split)):
        return None, None
    found = dataset_normalization(data.dataset if isinstance(data, DataLoader) else data)
    if found is None:
        return None, None
    mean, std, where = found
    if min(std) <= 0:
        raise DataError(f"std must be positive, got {std}")
    if is_writer():  # a wrong guess shows before any map is made
        tqdm.write(
            f"data: images normalised with mean {rounded(mean)} and std {rounded(std)}, "
            f"read from the Normalize in {where}: the model is fed them normalised so, "
            "the gallery shows them un-normalised"
        )
    return mean, std


def from_user_data(
    data: Any,
    labels: Any = None,
    *,
    classes: Sequence[str] | int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 64,
    keys: tuple[Any, Any] | None = None,
) -> UserData:
    """The user's test data as `UserData`: batches of [0, 1] images and int64 labels.

    `data`: a torch `DataLoader` or map-style `Dataset` yielding `(image, label)` (tensors,
    numpy arrays or PIL images; (3, H, W) or (H, W, 3)); images (N, 3, H, W) or (N, H, W, 3)
    as an array or tensor, with `labels` (N,) beside them (or the pair as a tuple); a camlens
    `Dataset` (its test split) or `Split`.
    `classes`: the class names, or their number K (names "0".."K-1"); None: the dataset's
    `classes` attribute, else an error. `mean`/`std`: the normalisation the images carry;
    None: the `Normalize` the dataset applies (see `dataset_normalization`; one printed line
    says which), else none.
    `keys`: where image and label sit in each item or batch: `("image", "label")` for dicts,
    `(0, 1)` (the default) for tuples. The first batch is read and checked here, so a source
    that cannot work fails at this call; each later batch is checked as it is read.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(data, Dataset):
        classes = data.classes if classes is None else classes
        data = data.test
    if labels is not None:
        data = (data, labels)
    data, description = _described(data)
    names = _class_names(data, classes, description)
    mean, std = _normalization(data, mean, std)
    adapted = UserData(data, names, mean, std, batch_size, keys or (0, 1), description)
    next(iter(adapted), None)  # the first batch, checked now
    return adapted


def as_dataset(data: Any, **kwargs: Any) -> Dataset:
    """The user's test data as a camlens `Dataset`: what explain, compare and report take.

    `data` and `kwargs` as `from_user_data` (or a `UserData`). Read in one pass, batch by
    batch, its uint8 pixels (3 KB per 32 px image, 147 KB at 224 px) written to a file under
    `$CAMLENS_HOME/cache/user` as they pass and then memory-mapped (`MappedImages`; the file
    goes with the Dataset), so memory holds one batch whatever N; the train split is empty.
    [0, 1] images are rounded to the nearest 1/255, so images that came from 8-bit pixels
    come back exactly. `checksum` is a sha256 of the pixels and labels.
    """
    if isinstance(data, Dataset) and not kwargs:
        return data
    adapted = data if isinstance(data, UserData) else from_user_data(data, **kwargs)
    folder = default_home() / "cache" / "user"
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=folder, suffix=".u8")
    labels, digest, shape, n = [], hashlib.sha256(), None, 0
    try:
        with os.fdopen(fd, "wb") as f:
            for images, y in adapted:
                pixels = images.mul(255).round_().to(torch.uint8).cpu()  # (B, 3, H, W) uint8
                shape = tuple(pixels.shape[1:])
                raw = pixels.contiguous().numpy().tobytes()
                f.write(raw)
                digest.update(raw)
                digest.update(y.cpu().numpy().astype("<i8").tobytes())
                labels.append(y.cpu())
                n += pixels.shape[0]
    except BaseException:
        os.unlink(path)
        raise
    if n == 0:
        os.unlink(path)
        raise DataError(f"{adapted.description} yields no images")
    test = Split(MappedImages(path, n, shape[1:], owned=True), torch.cat(labels))
    train = Split(torch.empty(0, *shape, dtype=torch.uint8, device="cpu"), test.labels[:0])
    return Dataset(train, test, adapted.classes, adapted.description, digest.hexdigest())
