"""The user's own test data, adapted: batches of [0, 1] images and labels, streamed.

    data = from_user_data(loader)                # a DataLoader, Dataset, arrays, camlens Dataset
    for images, labels in data: ...              # (B, 3, H, W) float in [0, 1], (B,) int64
    dataset = as_dataset(loader)                 # the same, held as a camlens Dataset (uint8)

What comes in: a torch `Dataset` (items `(image, label)`) or `DataLoader` (batches of them),
images normalised or not; numpy arrays or tensors `(images, labels)`; a camlens `Dataset` or
`Split`. The normalisation is `mean=`/`std=` when given, else the torchvision-style `Normalize`
the dataset applies itself (see `dataset_normalization`; duck-typed, so camlens never imports
torchvision), said in one printed line; images normalised anywhere else (a `TensorDataset` of
normalised tensors, a `collate_fn`) are an error naming `mean=`/`std=`. Class names are
`classes=` when given, else the dataset's own `classes`.

Nothing is held whole: each pass reads the source again batch by batch, and each batch is
checked (shape, channels, size, labels in range) as it passes, so a bad input is one line
naming what is wrong and how to fix it, raised where it is met.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from camlens.data.dataset import Dataset, Split
from camlens.data.sources import DataError
from camlens.distributed import is_writer

__all__ = [
    "UserData",
    "as_dataset",
    "dataset_normalization",
    "from_user_data",
    "read_normalization",
]

# after undoing the normalisation, pixels may stray this far outside [0, 1] (float rounding,
# a JPEG's ringing) before the mean/std are taken to be wrong
_SLACK = 0.02


@dataclass(frozen=True)
class UserData:
    """A source of test images made re-iterable: `for images, labels in data` streams it.

    Built by `from_user_data`; each iteration reads `source` again, in its own order (a
    DataLoader's batches; a Dataset's items 0..N-1 in batches of `batch_size`).
    """

    source: Any  # what was passed: DataLoader, torch Dataset, (images, labels), camlens Split
    classes: tuple[str, ...]  # the K class names; labels are indices into them
    mean: tuple[float, float, float] | None  # the normalisation the source's images carry
    std: tuple[float, float, float] | None  # None: the images are already in [0, 1]
    batch_size: int  # images per batch where camlens forms the batches (not a DataLoader's)
    keys: tuple[Any, Any]  # where image and label sit in an item: (0, 1), or dict keys
    description: str  # what the report calls this data: "DataLoader over CIFAR10", ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(images (B, 3, H, W) float in [0, 1], labels (B,) int64), batch by batch."""
        size = None
        for raw in self._raw_batches():
            images, labels = self._check(raw, size)
            size = tuple(images.shape[-2:])
            yield images, labels

    def __len__(self) -> int:
        """The number of images, where the source says it without a pass (else a DataError)."""
        src = self.source
        if isinstance(src, DataLoader):
            src = src.dataset
        if isinstance(src, Split):
            return len(src)
        if isinstance(src, tuple):
            return int(src[1].shape[0])
        try:
            return len(src)
        except TypeError:
            raise DataError(f"{self.description} does not say its length") from None

    def _raw_batches(self) -> Iterator[tuple[Any, Any]]:
        src, keys = self.source, self.keys
        if isinstance(src, Split):
            for start in range(0, len(src), self.batch_size):
                end = start + self.batch_size
                yield src.images[start:end], src.labels[start:end]
        elif isinstance(src, tuple):
            images, labels = src
            for start in range(0, int(labels.shape[0]), self.batch_size):
                end = start + self.batch_size
                yield images[start:end], labels[start:end]
        elif isinstance(src, DataLoader):
            for batch in src:
                yield _pick(batch, keys, "batch")
        else:  # a map-style dataset: items stacked into batches here
            n = len(src)
            for start in range(0, n, self.batch_size):
                items = [
                    _pick(src[i], keys, "item")
                    for i in range(start, min(n, start + self.batch_size))
                ]
                images = torch.stack([_chw(_tensor(x)) for x, _ in items])
                labels = torch.tensor([int(_tensor(y)) for _, y in items])
                yield images, labels

    def _check(self, raw: tuple[Any, Any], size: tuple[int, int] | None) -> tuple[Tensor, Tensor]:
        images, labels = _tensor(raw[0]), _tensor(raw[1])
        if images.dim() != 4:
            raise DataError(
                f"images of shape {tuple(images.shape)}: expected a batch (B, 3, H, W) or "
                "(B, H, W, 3); give each image 3 colour channels"
            )
        images = _nchw(images)
        if size is not None and tuple(images.shape[-2:]) != size:
            raise DataError(
                f"images of {tuple(images.shape[-2:])} after images of {size}: resize every "
                "test image to one size (e.g. transforms.Resize) before camlens reads them"
            )
        if labels.dim() == 0:
            labels = labels[None]
        if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise DataError(
                f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype}: expected class "
                "indices (B,) int64; one-hot labels: pass labels.argmax(1)"
            )
        if labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{images.shape[0]} images but {labels.shape[0]} labels in a batch: pair each "
                "image with one label"
            )
        k = len(self.classes)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            bad = int(labels.max()) if int(labels.max()) >= k else int(labels.min())
            raise DataError(
                f"label {bad} is outside the {k} classes {list(self.classes)[:12]}: pass "
                "classes= naming every class the labels index"
            )
        return self._to_unit(images), labels.long()

    def _to_unit(self, images: Tensor) -> Tensor:
        """-> float [0, 1]: uint8 / 255, or x * std + mean where the source normalised."""
        if images.dtype == torch.uint8:
            return images.float().div_(255)
        images = images.float()
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
            images = images * std + mean
        lo, hi = float(images.min()), float(images.max())
        if lo < -_SLACK or hi > 1 + _SLACK:
            if self.mean is None:
                raise DataError(
                    f"images range over [{lo:.2f}, {hi:.2f}], not [0, 1]: they look normalised, "
                    "but not by a Normalize in the dataset's transform; pass "
                    "camlens.from_user_data(data, mean=(r, g, b), std=(r, g, b)) in place of the "
                    "data (the mean and std they were normalised with)"
                )
            raise DataError(
                f"images range over [{lo:.2f}, {hi:.2f}] after undoing mean {self.mean} and std "
                f"{self.std}: pass camlens.from_user_data(data, mean=(r, g, b), std=(r, g, b)) "
                "with the mean and std the images were normalised with"
            )
        return images.clamp_(0, 1)


def read_normalization(
    transform: Any,
) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """(mean, std) of the last `Normalize` in a torchvision-style transform, else None.

    Duck-typed: a transform with `.mean` and `.std` values, or one holding such, nested: in
    `.transforms` (a `Compose`, v1 or v2) or as its modules (an `nn.Sequential`, which
    torchvision suggests for scripting); a single value stands for all three channels.
    """
    found = None
    stack = [transform]
    while stack:
        t = stack.pop(0)
        if t is None:
            continue
        # a tensor has .mean() and .std() too: a Normalize holds values, not methods
        if hasattr(t, "mean") and hasattr(t, "std") and not callable(t.mean):
            found = (_triple(t.mean), _triple(t.std))
        inner = getattr(t, "transforms", None)
        if isinstance(inner, (list, tuple, nn.ModuleList)):
            stack[:0] = list(inner)
        elif isinstance(t, nn.Module):
            stack[:0] = list(t.children())
    return found


def dataset_normalization(
    data: Any,
) -> tuple[tuple[float, float, float], tuple[float, float, float], str] | None:
    """(mean, std, where) of the `Normalize` a torch dataset applies itself, else None.

    Looked for in each dataset `data` wraps, from the outside in, as its items pass through
    them: its `transform`, then its `transforms` (a VisionDataset built with `transforms=`),
    then the dataset inside (a `Subset`'s, a wrapper's `.dataset`), or those joined in a
    `ConcatDataset` (which must agree). `where` names it: "CIFAR10.transform".
    """
    for _ in range(8):  # a dataset wrapping itself must not hang the call
        for name in ("transform", "transforms"):
            found = read_normalization(getattr(data, name, None))
            if found is not None:
                return (*found, f"{type(data).__name__}.{name}")
        parts = getattr(data, "datasets", None)
        if isinstance(parts, (list, tuple)) and parts:
            each = [dataset_normalization(part) for part in parts]
            if len({None if f is None else f[:2] for f in each}) > 1:
                raise DataError(
                    f"the {len(parts)} datasets joined in the {type(data).__name__} are "
                    "normalised differently: join test datasets built with one transform"
                )
            return each[0]
        data = getattr(data, "dataset", None)
        if data is None:
            return None
    return None


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
    if isinstance(data, (list, tuple)) and len(data) == 2 and _is_array(data[0]):
        data = (_tensor(data[0]), _tensor(data[1]))
        if data[0].shape[0] != data[1].shape[0]:
            raise DataError(
                f"{data[0].shape[0]} images but {data[1].shape[0]} labels: pass one label per image"
            )
        description = f"arrays of {data[0].shape[0]} images"
    elif _is_array(data):
        raise DataError("images without labels: pass from_user_data(images, labels)")
    elif isinstance(data, Split):
        description = f"a split of {len(data)} images"
    elif isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise DataError(
                "the DataLoader shuffles (shuffle=True): mistakes are found by position over "
                "several passes, so pass one with shuffle=False"
            )
        if data.drop_last:
            raise DataError("the DataLoader has drop_last=True: pass drop_last=False")
        description = f"a DataLoader over {type(_innermost(data.dataset)).__name__}"
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        description = f"a {type(_innermost(data)).__name__} of {len(data)} images"
    elif hasattr(data, "__next__"):
        raise DataError(
            f"a {type(data).__name__} can be read once, and camlens reads the test data "
            "several times: pass a DataLoader or a Dataset"
        )
    else:
        raise DataError(
            f"cannot read test data from a {type(data).__name__}: pass a DataLoader, a torch "
            "Dataset, (images, labels) arrays or a camlens Dataset"
        )
    inner = _innermost(data.dataset if isinstance(data, DataLoader) else data)
    if classes is None:
        classes = getattr(inner, "classes", None)
        if classes is None:
            raise DataError(
                f"{description} has no `classes`: pass classes=[names] (or their number)"
            )
    if isinstance(classes, int):
        classes = [str(k) for k in range(classes)]
    classes = tuple(str(c) for c in classes)
    if (mean is None) != (std is None):
        raise DataError("pass mean= and std= together (the normalisation of the images)")
    if mean is None:
        found = None
        if not isinstance(data, (tuple, Split)):
            found = dataset_normalization(data.dataset if isinstance(data, DataLoader) else data)
        mean, std = (None, None) if found is None else found[:2]
        if found is not None and is_writer():
            # said, as the user never named it: a wrong guess shows before any map is made
            tqdm.write(
                f"data: images normalised with mean {_rounded(mean)} and std {_rounded(std)}, "
                f"read from the Normalize in {found[2]}: the model is fed them normalised so, "
                "the gallery shows them un-normalised"
            )
    else:
        mean, std = _triple(mean), _triple(std)
    if std is not None and min(std) <= 0:
        raise DataError(f"std must be positive, got {std}")
    adapted = UserData(
        data,
        classes,
        mean,
        std,
        batch_size,
        keys or (0, 1),
        description,  # type: ignore[arg-type]
    )
    next(iter(adapted), None)  # the first batch, checked now
    return adapted


def as_dataset(data: Any, **kwargs: Any) -> Dataset:
    """The user's test data held as a camlens `Dataset`: what explain, compare and report take.

    `data` and `kwargs` as `from_user_data` (or a `UserData`). Read in one pass and held as
    uint8 (3 KB per 32 px image, 147 KB at 224 px; about twice that at its peak, while the
    batches are joined), not as the float tensors the source yields (4x more); the train split
    is empty. [0, 1] images are rounded to the nearest 1/255, so images that came from 8-bit
    pixels come back exactly. `checksum` is a sha256 of the pixels and labels.
    """
    if isinstance(data, Dataset) and not kwargs:
        return data
    adapted = data if isinstance(data, UserData) else from_user_data(data, **kwargs)
    chunks, labels, digest = [], [], hashlib.sha256()
    for images, y in adapted:
        pixels = images.mul(255).round_().to(torch.uint8).cpu()  # (B, 3, H, W) uint8
        digest.update(pixels.numpy().tobytes())
        digest.update(y.cpu().numpy().astype("<i8").tobytes())
        chunks.append(pixels)
        labels.append(y.cpu())
    if not chunks:
        raise DataError(f"{adapted.description} yields no images")
    test = Split(torch.cat(chunks), torch.cat(labels))
    del chunks
    train = Split(test.images[:0], test.labels[:0])
    return Dataset(train, test, adapted.classes, adapted.description, digest.hexdigest())


def _innermost(data: Any) -> Any:
    """A `Subset`'s dataset (and a Subset's Subset's), a `ConcatDataset`'s first: where
    `classes` live."""
    seen = 0
    while not hasattr(data, "classes") and seen < 8:
        parts = getattr(data, "datasets", None)
        if isinstance(parts, (list, tuple)) and parts:
            data = parts[0]
        elif hasattr(data, "dataset"):
            data = data.dataset
        else:
            break
        seen += 1
    return data


def _pick(item: Any, keys: tuple[Any, Any], what: str) -> tuple[Any, Any]:
    if isinstance(item, dict):
        if keys == (0, 1):
            raise DataError(
                f"each {what} is a dict with keys {sorted(item)}: pass keys=(image key, label "
                "key), e.g. keys=('image', 'label')"
            )
        missing = [k for k in keys if k not in item]
        if missing:
            raise DataError(f"each {what} lacks key {missing[0]!r}: its keys are {sorted(item)}")
        return item[keys[0]], item[keys[1]]
    if isinstance(item, (list, tuple)):
        if keys == (0, 1) and len(item) != 2:
            raise DataError(
                f"each {what} has {len(item)} parts, not (image, label): pass keys=(i, j), the "
                "positions of image and label"
            )
        try:
            return item[keys[0]], item[keys[1]]
        except (IndexError, TypeError):
            raise DataError(f"keys {keys} do not index a {what} of {len(item)} parts") from None
    raise DataError(
        f"each {what} is a {type(item).__name__}, not (image, label): yield pairs, or dicts "
        "with keys="
    )


def _is_array(x: Any) -> bool:
    return isinstance(x, (Tensor, np.ndarray))


def _tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, np.integer)):
        return torch.tensor(int(x))
    array = np.asarray(x)  # numpy arrays, PIL images, nested lists
    if array.dtype == object:
        raise DataError(f"cannot read a {type(x).__name__} as a tensor: yield tensors or arrays")
    return torch.from_numpy(np.ascontiguousarray(array))


def _chw(image: Tensor) -> Tensor:
    """One image (3, H, W) or (H, W, 3) -> (3, H, W)."""
    if image.dim() != 3:
        raise DataError(
            f"an image of shape {tuple(image.shape)}: expected (3, H, W) or (H, W, 3); give "
            "each image 3 colour channels"
        )
    return _nchw(image[None])[0]


def _nchw(images: Tensor) -> Tensor:
    """(B, 3, H, W) stays; (B, H, W, 3) -> (B, 3, H, W); anything else is an error."""
    if images.shape[1] == 3:
        return images
    if images.shape[-1] == 3:
        return images.permute(0, 3, 1, 2)
    raise DataError(
        f"images of shape {tuple(images.shape)} have no axis of 3 colour channels: expected "
        "(B, 3, H, W) or (B, H, W, 3); repeat a grey channel 3 times"
    )


def _rounded(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _triple(values: Any) -> tuple[float, float, float]:
    flat = [float(v) for v in np.asarray(values, dtype=float).reshape(-1)]
    if len(flat) == 1:
        flat *= 3
    if len(flat) != 3:
        raise DataError(f"mean/std need 1 or 3 values (R, G, B), got {len(flat)}")
    return (flat[0], flat[1], flat[2])
