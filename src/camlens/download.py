"""Fetch and unpack the official CIFAR-10 python archive, resumably and safely.

The archive is downloaded to `NAME.part` and renamed to `NAME` only once its md5 matches, so the
final name always means a verified file; a broken connection keeps the part for an HTTP Range
resume. Extraction goes to a temporary folder inside `home` and is renamed into place, so a folder
named `cifar-10-batches-py` is never half written. Archive members that could write outside the
destination are refused by our own check (Python 3.10 has no tarfile filters) and, where the
running Python has it, by tarfile's "data" filter as well.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "ARCHIVE_NAME",
    "FOLDER_NAME",
    "EXPECTED_FILES",
    "DownloadError",
    "UnsafeArchiveError",
    "default_home",
    "is_complete",
    "file_md5",
    "fetch_cifar10",
    "extract_archive_safely",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
EXPECTED_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

CHUNK = 1 << 16
# Python >= 3.12, and 3.8.17 / 3.9.17 / 3.10.12 / 3.11.4 backports; tests switch it off.
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
_FILTER_ERRORS: tuple[type[Exception], ...] = (
    (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
)


class DownloadError(RuntimeError):
    """A download, checksum or extraction failure, with a one-line message for the CLI."""


class UnsafeArchiveError(DownloadError):
    """An archive member would write outside the destination, or is a device file."""


def default_home() -> Path:
    """`$CAMLENS_HOME`, or `~/.cache/camlens`."""
    env = os.environ.get("CAMLENS_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "camlens"


def is_complete(folder: Path) -> bool:
    """Whether `folder` holds every batch file of the python CIFAR-10 release."""
    return all((Path(folder) / name).is_file() for name in EXPECTED_FILES)


def file_md5(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_cifar10(
    home: Path | None = None,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Return `home/cifar-10-batches-py`, downloading, verifying and extracting it if needed."""
    home = Path(home).expanduser() if home is not None else default_home()
    folder = home / FOLDER_NAME
    if is_complete(folder):
        return folder
    home.mkdir(parents=True, exist_ok=True)
    archive = home / ARCHIVE_NAME
    # Only a verified download is ever renamed to this name, so a mismatch is a stray bad copy.
    if archive.is_file() and file_md5(archive) != md5:
        archive.unlink()
    if not archive.is_file():
        part = home / (ARCHIVE_NAME + ".part")
        _download(url, part, home, timeout, progress)
        got = file_md5(part)
        if got != md5:
            part.unlink()
            raise DownloadError(
                f"md5 mismatch for {url}: expected {md5}, got {got}; "
                "deleted the bad download, run again to retry"
            )
        os.replace(part, archive)
    _extract_into_place(archive, folder)
    return folder


def _offline(url: str, reason: object, home: Path) -> DownloadError:
    reason = " ".join(str(reason).split())
    return DownloadError(
        f"cannot download CIFAR-10 from {url} ({reason}); download {ARCHIVE_NAME} elsewhere "
        f"and pass it with --data /path/to/{ARCHIVE_NAME}, "
        f"or put its extracted {FOLDER_NAME}/ folder in {home}"
    )


def _download(url: str, part: Path, home: Path, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to `part`; raise DownloadError if it ends early."""
    start = part.stat().st_size if part.exists() else 0
    # identity: a gzip-encoded body would make Range offsets and Content-Length mean other bytes.
    headers = {"User-Agent": "camlens", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and start:
            return  # the part already holds every byte; the md5 check decides
        raise _offline(url, f"HTTP {err.code} {err.reason}", home) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise _offline(url, getattr(err, "reason", err), home) from None
    with response:
        length = _to_int(response.headers.get("Content-Length"))
        if start and response.status == 206:
            first, total = _content_range(response.headers.get("Content-Range", ""))
            if first != start:
                # A resume we cannot splice safely: start over once, without Range.
                response.close()
                part.unlink()
                return _download(url, part, home, timeout, progress)
            mode = "ab"
            if total is None and length is not None:
                total = start + length
        else:
            # A 200 to a Range request means the server ignores ranges: start over.
            start, mode, total = 0, "wb", length
        done = start
        bar = tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=ARCHIVE_NAME,
            disable=not progress,
        )
        with open(part, mode) as f, bar:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (http.client.HTTPException, OSError) as err:
                    raise _truncated(url, part, done, total, err) from None
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    # urllib returns b"" rather than raising when the peer closes before Content-Length.
    if total is not None and done < total:
        raise _truncated(url, part, done, total, "connection closed early")


def _truncated(url: str, part: Path, done: int, total: int | None, reason: object) -> DownloadError:
    reason = " ".join(str(reason).split()) or type(reason).__name__
    return DownloadError(
        f"download of {url} stopped at {done} of {total or '?'} bytes ({reason}); "
        f"kept {part}, run again to resume"
    )


def _to_int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _content_range(value: str) -> tuple[int | None, int | None]:
    """`bytes FIRST-LAST/TOTAL` -> (FIRST, TOTAL); None where absent or `*`."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value)
    if match is None:
        return None, None
    total = match.group(2)
    return int(match.group(1)), None if total == "*" else int(total)


def _extract_into_place(archive: Path, folder: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder.parent))
    try:
        extract_archive_safely(archive, tmp)
        extracted = tmp / FOLDER_NAME
        if not is_complete(extracted):
            raise DownloadError(
                f"{archive} holds no complete {FOLDER_NAME}/ folder "
                f"(expected {', '.join(EXPECTED_FILES)})"
            )
        # Whatever sits at `folder` now is incomplete (a killed copy, stray files): replace it.
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        elif folder.exists() or folder.is_symlink():
            folder.unlink()
        os.replace(extracted, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract_archive_safely(archive: Path, dest: Path) -> None:
    """Extract a tar archive (any compression) into `dest`, refusing members that escape it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _check_members(members, dest, archive)
            if _HAS_DATA_FILTER:
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except _FILTER_ERRORS as err:
        raise UnsafeArchiveError(f"refusing to extract {archive}: {err}") from None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"cannot extract {archive}: {err}") from None


def _check_members(members: Iterable[tarfile.TarInfo], dest: Path, archive: Path) -> None:
    members = list(members)
    # Paths are checked lexically, which matches the real filesystem only if nothing is written
    # through a symlink; so no member, and no link target, may pass through an archive symlink.
    symlinks = {posixpath.normpath(m.name) for m in members if m.issym()}
    root = os.path.realpath(dest)
    for member in members:
        problem = _member_problem(member, symlinks)
        # Links already on disk in `dest` would redirect a write just as archive links do.
        if problem is None and not _inside(os.path.realpath(os.path.join(root, member.name)), root):
            problem = "resolves outside the destination through a link already there"
        if problem is not None:
            raise UnsafeArchiveError(
                f"refusing to extract {archive}: member {member.name!r} {problem}"
            )


def _member_problem(member: tarfile.TarInfo, symlinks: set[str]) -> str | None:
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "is a device or other special file"
    name = member.name
    if _escapes(name):
        return "has an absolute path or '..'"
    if _through_symlink(name, symlinks):
        return "is written through a symlink in the archive"
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hard link"
        # Symlink targets are relative to the link's folder, hard link targets to the root.
        base = posixpath.dirname(name) if member.issym() else ""
        target = member.linkname
        joined = posixpath.join(base, target)
        if posixpath.isabs(target) or posixpath.normpath(joined).split("/")[0] == "..":
            return f"is a {kind} pointing outside the destination ({target!r})"
        if _through_symlink(joined, symlinks):
            return f"is a {kind} whose target passes through a symlink ({target!r})"
    return None


def _escapes(name: str) -> bool:
    return posixpath.isabs(name) or name.startswith("\\") or ".." in name.split("/")


def _through_symlink(path: str, symlinks: set[str]) -> bool:
    """Whether a proper prefix of `path` (lexically normalised) is an archive symlink."""
    parts = [p for p in path.split("/") if p]
    prefixes = (posixpath.normpath("/".join(parts[:i])) for i in range(1, len(parts)))
    return any(prefix in symlinks for prefix in prefixes)


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root
