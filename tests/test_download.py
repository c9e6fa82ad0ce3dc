"""camlens.download against a loopback HTTP server: resume, checksum, offline, unsafe archives."""

from __future__ import annotations

import hashlib
import io
import os
import random
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from camlens import download
from camlens.download import (
    ARCHIVE_NAME,
    FOLDER_NAME,
    DownloadError,
    UnsafeArchiveError,
    default_home,
    extract_archive_safely,
    fetch_cifar10,
)

NAMES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", "readme.html"]


def make_archive(path: Path, seed: int = 0) -> bytes:
    """A fake release: the real layout and names, random bytes (download.py never parses them)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(FOLDER_NAME)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name in NAMES:
            data = rng.randbytes(6000)
            info = tarfile.TarInfo(f"{FOLDER_NAME}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.payload = b""
        self.truncate_first: int | None = None  # send only K body bytes on the first request
        self.ignore_range = False
        self.ranges: list[str | None] = []  # the Range header of each request, in order
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{ARCHIVE_NAME}"


class RangeHandler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        range_header = self.headers.get("Range")
        with srv.lock:
            first_request = not srv.ranges
            srv.ranges.append(range_header)
        body, start = srv.payload, 0
        if range_header and not srv.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        rest = body[start:]
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        if first_request and srv.truncate_first is not None:
            # Promise the whole body, send a prefix, then hang up (HTTP/1.0 closes after this).
            rest = rest[: srv.truncate_first]
        self.wfile.write(rest)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeServer]:
    srv = FakeServer()
    srv.payload = make_archive(tmp_path / "src" / ARCHIVE_NAME)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def fetch(srv: FakeServer, home: Path, **kwargs: object) -> Path:
    kwargs = {"md5": md5_of(srv.payload), "progress": False, "timeout": 5, **kwargs}
    return fetch_cifar10(home, url=srv.url, **kwargs)


def test_fetch_downloads_verifies_and_extracts(server: FakeServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = fetch(server, home)
    assert folder == home / FOLDER_NAME
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)
    with tarfile.open(fileobj=io.BytesIO(server.payload)) as tar:
        member = tar.extractfile(f"{FOLDER_NAME}/data_batch_3")
        assert member is not None
        assert (folder / "data_batch_3").read_bytes() == member.read()
    assert (home / ARCHIVE_NAME).read_bytes() == server.payload
    # No .part and no temporary extraction folder left behind.
    assert sorted(p.name for p in home.iterdir()) == sorted([ARCHIVE_NAME, FOLDER_NAME])
    assert server.ranges == [None]


def test_second_call_makes_no_request(server: FakeServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    fetch(server, home)
    (home / ARCHIVE_NAME).unlink()  # the folder alone must be enough
    assert fetch(server, home) == home / FOLDER_NAME
    assert len(server.ranges) == 1


def test_progress_bar_is_shown(server: FakeServer, tmp_path: Path, capsys) -> None:
    fetch(server, tmp_path / "home", progress=True)
    assert ARCHIVE_NAME in capsys.readouterr().err


def test_truncated_download_resumes_with_one_range_request(
    server: FakeServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    cut = len(server.payload) // 3
    server.truncate_first = cut
    with pytest.raises(DownloadError, match="resume") as info:
        fetch(server, home)
    assert "\n" not in str(info.value)
    part = home / (ARCHIVE_NAME + ".part")
    assert part.stat().st_size == cut
    assert not (home / FOLDER_NAME).exists()

    fetch(server, home)
    assert server.ranges == [None, f"bytes={cut}-"]
    assert md5_of((home / ARCHIVE_NAME).read_bytes()) == md5_of(server.payload)
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(server: FakeServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cut = len(server.payload) // 2
    server.truncate_first, server.ignore_range = cut, True
    with pytest.raises(DownloadError, match="resume"):
        fetch(server, home)
    folder = fetch(server, home)
    assert server.ranges == [None, f"bytes={cut}-"]  # asked for a range, got a 200
    assert (home / ARCHIVE_NAME).read_bytes() == server.payload
    assert (folder / "test_batch").is_file()


def test_complete_part_file_answered_416(server: FakeServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / (ARCHIVE_NAME + ".part")).write_bytes(server.payload)
    folder = fetch(server, home)
    assert server.ranges == [f"bytes={len(server.payload)}-"]
    assert (home / ARCHIVE_NAME).read_bytes() == server.payload
    assert (folder / "batches.meta").is_file()


def test_wrong_checksum_leaves_nothing(server: FakeServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    expected = md5_of(server.payload)
    server.payload = make_archive(tmp_path / "other" / ARCHIVE_NAME, seed=1)
    with pytest.raises(DownloadError, match="md5") as info:
        fetch(server, home, md5=expected)
    message = str(info.value)
    assert expected in message and md5_of(server.payload) in message
    assert list(home.iterdir()) == []


def test_killed_extraction_is_redone_from_the_archive(server: FakeServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = fetch(server, home)
    for name in NAMES[1:]:  # what a killed copy might leave: one batch only
        (folder / name).unlink()
    assert fetch(server, home) == folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)
    assert len(server.ranges) == 1


def test_offline_error_points_to_local_copy(tmp_path: Path) -> None:
    # Bound but not listening: connecting is refused at once, no outside host involved.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/{ARCHIVE_NAME}"
        home = tmp_path / "home"
        with pytest.raises(DownloadError) as info:
            fetch_cifar10(home, url=url, progress=False, timeout=2)
    message = str(info.value)
    assert "--data" in message and str(home) in message and url in message
    assert "\n" not in message


def test_default_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAMLENS_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    monkeypatch.delenv("CAMLENS_HOME")
    assert default_home() == Path.home() / ".cache" / "camlens"


# --- unsafe archives -------------------------------------------------------------------------


def _file(name: str, data: bytes = b"evil") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


MALICIOUS = {
    "dotdot": lambda out: [_file("../evil")],
    "absolute": lambda out: [_file(str(out / "evil"))],
    "symlink-absolute": lambda out: [_link("passwd", "/etc/passwd")],
    "symlink-parent": lambda out: [_link("up", "../"), _file("up/evil")],
    "symlink-chain": lambda out: [_link("s", "."), _link("e", "s/.."), _file("e/outside/evil")],
    "hardlink-outside": lambda out: [_link("h", "../outside/target", tarfile.LNKTYPE)],
    "device": lambda out: [_device("null")],
}


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def snapshot(root: Path, skip: Path) -> set[str]:
    seen = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if path != skip and skip not in path.parents:
                seen.add(str(path))
    return seen


@pytest.fixture(params=[True, False], ids=["data-filter", "own-check-only"])
def data_filter(request, monkeypatch) -> bool:
    if request.param and not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter")
    monkeypatch.setattr(download, "_HAS_DATA_FILTER", request.param)
    return request.param


@pytest.mark.parametrize("kind", MALICIOUS)
def test_unsafe_archive_is_refused(kind: str, data_filter: bool, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_bytes(b"keep")
    archive = write_tar(tmp_path / "bad.tar.gz", MALICIOUS[kind](outside))
    dest = tmp_path / "dest"
    before = snapshot(tmp_path, dest)
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        extract_archive_safely(archive, dest)
    assert snapshot(tmp_path, dest) == before
    assert list(dest.iterdir()) == []
    assert (outside / "target").read_bytes() == b"keep"


def test_link_already_in_dest_is_not_followed(data_filter: bool, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    archive = write_tar(tmp_path / "bad.tar.gz", [_file("link/evil")])
    with pytest.raises(UnsafeArchiveError):
        extract_archive_safely(archive, dest)
    assert list(outside.iterdir()) == []


def test_safe_archive_with_inner_symlink_extracts(data_filter: bool, tmp_path: Path) -> None:
    members = [_file("./top/sub/a.txt", b"hello"), _link("./top/alias", "sub/a.txt")]
    archive = write_tar(tmp_path / "ok.tar.gz", members)
    extract_archive_safely(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "top" / "alias").read_bytes() == b"hello"


def test_corrupt_archive_is_a_download_error(tmp_path: Path) -> None:
    archive = tmp_path / ARCHIVE_NAME
    archive.write_bytes(b"not a tar file at all")
    with pytest.raises(DownloadError, match="cannot extract"):
        extract_archive_safely(archive, tmp_path / "dest")
