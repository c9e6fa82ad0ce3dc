"""Fetch the official CIFAR-10 python archive, resumably, and verify it.

The archive is downloaded to `NAME.part` and renamed to `NAME` only once its md5 matches, so the
final name always means a verified file; a broken connection keeps the part for an HTTP Range
resume. The archive is never extracted: `camlens.data` reads it in memory, so no member name
can write anywhere.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "ARCHIVE_NAME",
    "DownloadError",
    "default_home",
    "file_digest",
    "fetch_cifar10",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download or checksum failure, with a one-line message for the CLI."""


def default_home() -> Path:
    """`$CAMLENS_HOME`, or `~/.cache/camlens`."""
    env = os.environ.get("CAMLENS_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "camlens"


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks: sha256 keys caches, md5 checks the release."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
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
    """Return `home/cifar-10-python.tar.gz`, downloading and verifying it if needed."""
    home = Path(home).expanduser() if home is not None else default_home()
    archive = home / ARCHIVE_NAME
    if archive.is_file():
        if file_digest(archive, "md5") == md5:
            return archive
        archive.unlink()  # only verified downloads get this name: this is a stray bad copy
    home.mkdir(parents=True, exist_ok=True)
    part = home / (ARCHIVE_NAME + ".part")
    _download(url, part, home, timeout, progress)
    got = file_digest(part, "md5")
    if got != md5:
        part.unlink()
        raise DownloadError(
            f"md5 mismatch for {url}: expected {md5}, got {got}; "
            "deleted the bad download, run again to retry"
        )
    os.replace(part, archive)
    return archive


def _offline(url: str, reason: object, home: Path) -> DownloadError:
    reason = " ".join(str(reason).split())
    return DownloadError(
        f"cannot download CIFAR-10 from {url} ({reason}); download {ARCHIVE_NAME} elsewhere "
        f"and pass it with --data /path/to/{ARCHIVE_NAME}, or put it in {home}"
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
