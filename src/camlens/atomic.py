"""Atomic, durable file writes: a reader, a killed run or a power cut sees the old file or the new.

Each file is written to a temporary file beside its target and synced to disk, then renamed over
the target (a rename within one folder is atomic on POSIX and Windows), then its folder is synced
so that the rename itself survives a power cut. Any failure (a full disk, no permission) raises
`WriteError`, naming the file and the cause, and leaves the old file as it was.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save

__all__ = [
    "Content",
    "WriteError",
    "atomic_save_tensors",
    "atomic_write_bytes",
    "atomic_write_files",
]

# a file's content: its bytes, or a function that writes the file at the path it is given (a
# large file streamed to disk, never held in memory as one bytes object)
Content = bytes | Callable[[Path], None]


class WriteError(OSError):
    """A file that could not be written; the message names it and the cause (e.g. ENOSPC)."""


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


def _write(fd: int, tmp: str, data: Content, durable: bool) -> None:
    if callable(data):
        data(Path(tmp))
    else:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    if durable:
        os.fsync(fd)  # the data a writer function wrote through its own handle too


def atomic_write_files(files: dict[Path, Content], durable: bool = True) -> None:
    """Write each `path: data` to a temporary file, and only once all are written rename each
    over its path: files that belong together (a checkpoint's pair) stay together when the disk
    fills. `durable=False` skips the syncs, for files that are cheap to recreate."""
    temps: dict[Path, str] = {}
    path = Path()
    try:
        for path, data in ((Path(p), d) for p, d in files.items()):
            fd, temps[path] = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
            )
            try:
                os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; results should read like any file
                _write(fd, temps[path], data, durable)
            finally:
                os.close(fd)
        for path in list(temps):
            os.replace(temps[path], path)
            del temps[path]
        if durable and os.name == "posix":  # Windows cannot open a folder; NTFS logs renames
            for folder in {p.parent for p in map(Path, files)}:
                path = folder
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except OSError as e:
        code = e.errno or 0
        cause = f"{os.strerror(code)} ({errno.errorcode[code]})" if code in errno.errorcode else e
        error = WriteError(f"cannot write {path}: {cause}")
        error.errno = e.errno
        raise error from None
    finally:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: Content, durable: bool = True) -> None:
    """One file, written atomically and (unless `durable=False`) synced."""
    atomic_write_files({Path(path): data}, durable)


def atomic_save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], durable: bool = True
) -> None:
    """A safetensors file, serialised in memory and written like any other file (through
    os.write, so that a full disk is one WriteError: safetensors' own save_file raises its
    own error type)."""
    atomic_write_bytes(path, save(tensors, metadata=metadata), durable)
