"""Serving a viewer: uvicorn in a thread of its own, stoppable, on 127.0.0.1 by default.

`serve(viewer, host, port)` binds the socket first (port 0: any free port, read back), starts
uvicorn on it in a daemon thread and returns a `Running` once it answers, so a notebook's
kernel is never blocked; `Running.stop()` ends it. `camlens view` calls `Running.wait()`.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import uvicorn

from camlens.view.app import build_app
from camlens.view.state import Viewer

__all__ = ["LOCAL", "Running", "serve"]

LOCAL = "127.0.0.1"
# the Host headers a server on 127.0.0.1 answers: a browser on this machine sends one of these
LOCAL_NAMES = ["127.0.0.1", "localhost", "[::1]"]


class Running:
    """A viewer being served: its `url`, `stop()`, and inline display in Jupyter."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str, viewer: Viewer):
        self.server, self.thread, self.url, self.viewer = server, thread, url, viewer
        self.shown = False  # True: shown already (Colab's proxy): no iframe of 127.0.0.1 here

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].rstrip("/"))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread to end."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def wait(self) -> None:
        """Block until the server ends (Ctrl-C stops it)."""
        try:
            while self.thread.is_alive():
                self.thread.join(0.5)
        except KeyboardInterrupt:
            self.stop()

    def _repr_html_(self) -> str:  # Jupyter shows the viewer inline
        if self.shown:
            return f"<div>camlens view, served at {self.url} (<code>.stop()</code> ends it)</div>"
        return (
            f'<iframe src="{self.url}" width="100%" height="820" style="border:0"></iframe>'
            f'<div>camlens view: <a href="{self.url}" target="_blank">{self.url}</a> '
            "(<code>.stop()</code> ends it)</div>"
        )

    def __repr__(self) -> str:
        return f"camlens view at {self.url}"


def serve(
    viewer: Viewer, host: str = LOCAL, port: int = 0, quiet: bool = True, proxied: bool = False
) -> Running:
    """Serve `viewer` at http://host:port/ in a background thread (see the module docstring).
    Any host but 127.0.0.1 prints a warning: the page reads the folder and runs the model.
    On 127.0.0.1 only requests naming 127.0.0.1 or localhost are answered, unless `proxied`
    (Colab's kernel proxy forwards under names of its own)."""
    if host not in (LOCAL, "localhost"):
        print(
            f"camlens view: warning: serving on {host}, not {LOCAL}: anyone who reaches this "
            "machine can browse the folder's images and run the model",
            file=sys.stderr,
        )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    local = host in (LOCAL, "localhost")
    app = build_app(viewer, LOCAL_NAMES if local and not proxied else None)
    config = uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=not quiet)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("camlens view: the server did not start")
        time.sleep(0.02)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return Running(server, thread, f"http://{shown}:{bound}/", viewer)
