"""`ImageStore`: a split's uint8 images (N, 3, S, S) read on demand, never held whole.

Every consumer of `split.images` takes it as it took the uint8 tensor before: `len()`,
`.shape`, and `images[idx]` with an index tensor, a slice, a mask or an int, which decodes
(or reads from a memory map) only the rows asked and returns a uint8 tensor. A whole-split
pass walks `batches()`: a torch `DataLoader` whose worker processes decode one batch each,
so peak memory is a few batches, whatever N. Anything else asked of a store (a torch function,
a tensor method) reads all of it first, as the tensor would have held it: right for the small
splits tests and training use, and the reason no consumer of a test split does it.

    FileImages    photos in a folder or a tar, decoded and cropped per row (decode.Preprocess)
    MappedImages  raw uint8 rows in a file (the pixel cache, the user's data spilled), mmapped
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from camlens.data.decode import Preprocess, decode_image
from camlens.data.sources import DataError

__all__ = ["FileImages", "ImageStore", "MappedImages", "loader_workers", "rows_of"]


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
PARALLEL_ROWS = 4096  # an index asking this many rows is read in DataLoader workers


def loader_workers() -> int:
    """Decoding processes of a whole-split pass: $CAMLENS_WORKERS, else up to 4 of the cores
    (the model's forward takes the others' time too; more only queue behind it)."""
    text = os.environ.get("CAMLENS_WORKERS")
    if text is not None:
        try:
            return max(0, int(text))
        except ValueError:
            raise DataError(f"CAMLENS_WORKERS={text!r}: set it to a number of processes") from None
    return min(4, os.cpu_count() or 1)


def _rows(key: Any, n: int) -> tuple[np.ndarray, bool]:
    """(row numbers (B,) int64, whether `key` picked one image) of any tensor-style index."""
    if isinstance(key, (int, np.integer)) or (isinstance(key, Tensor) and key.dim() == 0):
        i = int(key)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} images")
        return np.asarray([i % n]), True
    if isinstance(key, slice):
        return np.arange(n)[key], False
    if isinstance(key, Tensor):
        key = key.cpu().numpy()
    rows = np.asarray(key)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise IndexError(f"a mask of shape {rows.shape} for {n} images")
        return np.flatnonzero(rows), False
    rows = rows.astype(np.int64).reshape(-1)
    if rows.size and (rows.min() < -n or rows.max() >= n):
        raise IndexError(f"an index in {rows.min()}..{rows.max()} is out of range for {n} images")
    return rows % max(n, 1), False


def _whole(x: Any) -> Any:
    if isinstance(x, ImageStore):
        return x[:]
    if isinstance(x, (list, tuple)):
        return type(x)(_whole(v) for v in x)
    if isinstance(x, dict):
        return {k: _whole(v) for k, v in x.items()}
    return x


class ImageStore:
    """(N, 3, S, S) uint8 images, read per row; subclasses say how (`read`)."""

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, n: int, size: int | tuple[int, int]) -> None:
        h, w = (size, size) if isinstance(size, int) else size
        self.shape = torch.Size((n, 3, h, w))

    def read(self, rows: np.ndarray) -> Tensor:
        """(B, 3, S, S) uint8 of rows `rows` (B,) int64."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Tensor:
        rows, one = _rows(key, len(self))
        if rows.size >= PARALLEL_ROWS:  # many rows (training reads its split whole): workers
            whole = rows.size == len(self) and np.array_equal(rows, np.arange(len(self)))
            store = self if whole else _Subset(self, rows)
            return torch.cat(list(store.batches(PARALLEL_ROWS // 4)))
        images = (
            self.read(rows)
            if rows.size
            else torch.empty(0, *self.shape[1:], dtype=self.dtype, device="cpu")
        )
        return images[0] if one else images

    def dim(self) -> int:
        return 4

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def subset(self, rows: Any) -> ImageStore:
        """The rows `rows` picks as a store of their own: nothing read."""
        return _Subset(self, _rows(rows, len(self))[0])

    def batches(self, batch_size: int, workers: int | None = None) -> Iterator[Tensor]:
        """(B, 3, S, S) uint8 batches in order, each read in a DataLoader worker process."""
        n = len(self)
        nbatches = -(-n // batch_size)
        workers = loader_workers() if workers is None else workers
        workers = min(workers, nbatches - 1)  # one batch: a worker only adds its start-up
        sampler = BatchSampler(SequentialSampler(range(n)), batch_size, drop_last=False)
        loader = DataLoader(
            _Batches(self),
            batch_size=None,  # the sampler's lists of rows are the batches: one read each
            sampler=sampler,
            num_workers=max(workers, 0),
            prefetch_factor=2 if workers > 0 else None,
            worker_init_fn=_fixed_mmap_threshold,
        )
        with torch.device("cpu"):  # the loader's seed is a tensor: not on a meta/GPU default
            batches = iter(loader)
        yield from batches

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, dtype=torch.uint8)"

    # --------------------------------------------------------------- as the tensor it stands for

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return func(*_whole(args), **_whole(kwargs or {}))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        pixels = self[:].cpu().numpy()  # decoded on the CPU: .cpu() is free
        return pixels if dtype is None else pixels.astype(dtype)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # pickling, copying and hasattr probes: not the tensor's
            raise AttributeError(name)
        return getattr(self[:], name)


def _fixed_mmap_threshold(worker: int) -> None:
    """A decoding worker's big buffers (a photo, its copies, a batch: 0.2-10 MB each, of every
    size) are mmapped and returned when freed. glibc's default raises its mmap threshold at
    the first such free, after which they come from the heap, which fragments: a worker's
    peak RSS grew 340 -> 550 MB from 2,000 to 5,000 photos, and stays at 215 MB with this."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator, its ways
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 17)


class _Batches(torch.utils.data.Dataset):
    """What a DataLoader indexes: one list of rows -> one (B, 3, S, S) batch."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store

    def __getitem__(self, rows: list[int]) -> Tensor:
        return self.store.read(np.asarray(rows, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.store)


class _Subset(ImageStore):
    def __init__(self, store: ImageStore, rows: np.ndarray) -> None:
        super().__init__(len(rows), tuple(store.shape[-2:]))
        self.store, self.rows = store, rows

    def read(self, rows: np.ndarray) -> Tensor:
        return self.store.read(self.rows[rows])


class FileImages(ImageStore):
    """Photos in files or tar members, decoded and cropped (`prep`) when a row is read.

    A file that cannot be decoded (one whose header read but whose data is damaged) is said
    in one line and read as a black image: its place and label stay, so nothing shifts.
    """

    def __init__(
        self,
        names: Sequence[str],
        prep: Preprocess,
        tar: str | Path | None = None,
        offsets: np.ndarray | None = None,
        sizes: np.ndarray | None = None,
        keep: str | Path | None = None,
    ) -> None:
        super().__init__(len(names), prep.crop)
        self.names, self.prep = list(names), prep
        self.tar, self.offsets, self.sizes = (str(tar) if tar else None), offsets, sizes
        self.keep = None if keep is None else str(keep)
        self._fd: int | None = None
        self._pid = -1

    def kept(self) -> MappedImages | None:
        """The rows as a first whole pass wrote them to `keep`, else None."""
        if self.keep is None or not os.path.isfile(self.keep):
            return None
        if os.path.getsize(self.keep) != self.numel():  # a pass cut short, another size
            return None
        return MappedImages(self.keep, len(self), self.prep.crop)

    def batches(self, batch_size: int, workers: int | None = None) -> Iterator[Tensor]:
        """As ImageStore's; a small split (CIFAR's) with a `keep` path is decoded once: the
        first whole pass writes its pixels there as they pass, later ones map them."""
        kept = self.kept()
        if kept is not None:
            yield from kept.batches(batch_size, workers)
            return
        if self.keep is None:
            yield from super().batches(batch_size, workers)
            return
        Path(self.keep).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=Path(self.keep).parent, prefix=".pixels.")
        try:
            with os.fdopen(fd, "wb") as f:
                for batch in super().batches(batch_size, workers):
                    f.write(batch.cpu().numpy().tobytes())
                    yield batch
            os.replace(tmp, self.keep)  # whole: a pass cut short leaves nothing behind
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}  # a worker opens the tar itself

    def _bytes(self, i: int) -> bytes:
        if self.tar is None:
            with open(self.names[i], "rb") as f:
                return f.read()
        if self._fd is None or self._pid != os.getpid():  # a forked worker: its own descriptor
            self._fd, self._pid = os.open(self.tar, os.O_RDONLY), os.getpid()
            weakref.finalize(self, os.close, self._fd)
        return os.pread(self._fd, int(self.sizes[i]), int(self.offsets[i]))

    def read(self, rows: np.ndarray) -> Tensor:
        kept = self.kept()
        if kept is not None:
            return kept.read(rows)
        s = self.prep.crop
        out = np.zeros((len(rows), s, s, 3), dtype=np.uint8)
        for j, i in enumerate(rows.tolist()):
            try:
                out[j] = decode_image(self._bytes(i), self.names[i], self.prep)
            except (DataError, OSError) as e:
                print(f"data: {e}; read as a black image", file=sys.stderr)
        # (B, S, S, 3) -> (B, 3, S, S)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class MappedImages(ImageStore):
    """Raw (N, 3, H, W) uint8 rows at `offset` in `path`, memory-mapped per read.

    The map lives for one read, so the pages a pass touches are not kept resident: a pass
    over 50,000 cached 224-px images (7.5 GB) leaves the process at the size of a batch.
    `owned`: the file is deleted with the last store that reads it (the user's spilled data).
    """

    def __init__(
        self,
        path: str | Path,
        n: int,
        size: int | tuple[int, int],
        offset: int = 0,
        owned: bool = False,
    ) -> None:
        super().__init__(n, size)
        self.path, self.offset = str(path), offset
        if owned:
            weakref.finalize(self, _unlink, self.path, os.getpid())

    def read(self, rows: np.ndarray) -> Tensor:
        mapped = np.memmap(self.path, np.uint8, "r", self.offset, tuple(self.shape))
        if rows.size and np.all(np.diff(rows) == 1):  # a run: one slice, no gather
            out = np.array(mapped[rows[0] : rows[-1] + 1])
        else:
            out = np.array(mapped[rows])
        del mapped  # unmapped now: the pages are the page cache's, not this process's
        return torch.from_numpy(out)


def _unlink(path: str, pid: int) -> None:
    if os.getpid() != pid:  # a forked worker's copy died: the file is still its parent's
        return
    with contextlib.suppress(OSError):
        os.unlink(path)


def rows_of(images: Tensor | ImageStore, rows: slice) -> Tensor | ImageStore:
    """`images[rows]`, without reading a store's rows (a view of them)."""
    return images.subset(rows) if isinstance(images, ImageStore) else images[rows]
