"""`UserData`: the user's test data made re-iterable, checked batch by batch as it passes.

Each pass reads the source again (a DataLoader's own batches, in its own workers; a Dataset's
items in batches of `batch_size`): nothing is held whole. Each batch is checked (shape,
channels, size, labels in range) where it is met, so a bad input is one line naming the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from camlens.data.dataset import Split
from camlens.data.sources import DataError

__all__ = ["UserData", "as_tensor", "chw", "innermost", "is_array", "nchw", "pick"]

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
                yield pick(batch, keys, "batch")
        else:  # a map-style dataset: items stacked into batches here
            n = len(src)
            for start in range(0, n, self.batch_size):
                items = [
                    pick(src[i], keys, "item")
                    for i in range(start, min(n, start + self.batch_size))
                ]
                images = torch.stack([chw(as_tensor(x)) for x, _ in items])
                labels = torch.tensor([int(as_tensor(y)) for _, y in items])
                yield images, labels

    def _check(self, raw: tuple[Any, Any], size: tuple[int, int] | None) -> tuple[Tensor, Tensor]:
        images, labels = as_tensor(raw[0]), as_tensor(raw[1])
        if images.dim() != 4:
            raise DataError(
                f"images of shape {tuple(images.shape)}: expected a batch (B, 3, H, W) or "
                "(B, H, W, 3); give each image 3 colour channels"
            )
        images = nchw(images)
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


def innermost(data: Any) -> Any:
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


def pick(item: Any, keys: tuple[Any, Any], what: str) -> tuple[Any, Any]:
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


def is_array(x: Any) -> bool:
    return isinstance(x, (Tensor, np.ndarray))


def as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, np.integer)):
        return torch.tensor(int(x))
    array = np.asarray(x)  # numpy arrays, PIL images, nested lists
    if array.dtype == object:
        raise DataError(f"cannot read a {type(x).__name__} as a tensor: yield tensors or arrays")
    return torch.from_numpy(np.ascontiguousarray(array))


def chw(image: Tensor) -> Tensor:
    """One image (3, H, W) or (H, W, 3) -> (3, H, W)."""
    if image.dim() != 3:
        raise DataError(
            f"an image of shape {tuple(image.shape)}: expected (3, H, W) or (H, W, 3); give "
            "each image 3 colour channels"
        )
    return nchw(image[None])[0]


def nchw(images: Tensor) -> Tensor:
    """(B, 3, H, W) stays; (B, H, W, 3) -> (B, 3, H, W); anything else is an error."""
    if images.shape[1] == 3:
        return images
    if images.shape[-1] == 3:
        return images.permute(0, 3, 1, 2)
    raise DataError(
        f"images of shape {tuple(images.shape)} have no axis of 3 colour channels: expected "
        "(B, 3, H, W) or (B, H, W, 3); repeat a grey channel 3 times"
    )
