"""camlens.download against a loopback HTTP server: resume, checksum, offline.

Hostile archives are tested in test_data.py, where archives are read."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import camlens.data.load
from camlens.data import load_dataset
from camlens.download import ARCHIVE_NAME, DownloadError, default_home, fetch_cifar10
from conftest import tar_folder, write_cifar_batches


def make_archive(seed: int = 0) -> bytes:
    """Bytes to serve: download.py only moves and hashes them, it never opens the archive."""
    return random.Random(seed).randbytes(40_000)


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
    srv.payload = make_archive()
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


def test_fetch_downloads_and_verifies_the_archive(server: FakeServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert fetch(server, home) == home / ARCHIVE_NAME
    assert (home / ARCHIVE_NAME).read_bytes() == server.payload
    assert [p.name for p in home.iterdir()] == [ARCHIVE_NAME]  # no .part, nothing extracted
    assert server.ranges == [None]


def test_second_call_makes_no_request(server: FakeServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    fetch(server, home)
    assert fetch(server, home) == home / ARCHIVE_NAME
    assert len(server.ranges) == 1


def test_a_bad_copy_under_the_final_name_is_downloaded_again(
    server: FakeServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ARCHIVE_NAME).write_bytes(server.payload[:-1] + b"?")
    assert fetch(server, home).read_bytes() == server.payload
    assert server.ranges == [None]


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
    assert not (home / ARCHIVE_NAME).exists()

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
    fetch(server, home)
    assert server.ranges == [None, f"bytes={cut}-"]  # asked for a range, got a 200
    assert (home / ARCHIVE_NAME).read_bytes() == server.payload


def test_complete_part_file_answered_416(server: FakeServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / (ARCHIVE_NAME + ".part")).write_bytes(server.payload)
    fetch(server, home)
    assert server.ranges == [f"bytes={len(server.payload)}-"]
    assert (home / ARCHIVE_NAME).read_bytes() == server.payload


def test_wrong_checksum_leaves_nothing(server: FakeServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    expected = md5_of(server.payload)
    server.payload = make_archive(seed=1)
    with pytest.raises(DownloadError, match="md5") as info:
        fetch(server, home, md5=expected)
    message = str(info.value)
    assert expected in message and md5_of(server.payload) in message
    assert list(home.iterdir()) == []


def test_cifar10_is_downloaded_then_read_in_memory(server, tmp_path, monkeypatch) -> None:
    batches = write_cifar_batches(tmp_path / "src" / "cifar-10-batches-py")
    tar_folder(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "c.tgz", "cifar-10-batches-py")
    server.payload = (tmp_path / "c.tgz").read_bytes()
    monkeypatch.setattr(camlens.data.load, "fetch_cifar10", lambda home: fetch(server, home))
    home = tmp_path / "home"
    data = load_dataset("cifar10", home=home, progress=False)
    assert data.label == "CIFAR-10" and data.source == str(home / ARCHIVE_NAME)
    assert data.test.labels.tolist() == batches["test_batch"][1].tolist()
    assert sorted(p.name for p in home.iterdir()) == ["cache", ARCHIVE_NAME]  # nothing extracted


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
