"""camlens view in a real browser: headless Chromium (Debian's `chromium`) against a live server.

The product page carries no test code. The test drives Chromium over the DevTools protocol
(`--remote-debugging-port`, a websocket; websocket-client is in [dev]): it clicks, sets the
page's own controls and dispatches the events a user's action fires, uploads a file through
the real file input, reads the canvas's pixels, and saves screenshots. With
CAMLENS_VIEW_SHOTS=DIR it also writes them there (docs/images holds the ones docs/view.md
shows: `CAMLENS_VIEW_SHOTS=docs/images python -m pytest tests/test_view_browser.py`).
"""

import base64
import hashlib
import io
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

import test_report_browser
from camlens.classifier import ModelConfig, open_model
from camlens.view import open_folder
from camlens.view.server import serve
from test_report_browser import CHROMIUM, FLAGS

pytestmark = test_report_browser.pytestmark  # browser; skipped without Chromium

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
WAIT = 120  # seconds a step may take on a busy 2-core machine


class Browser:
    """Headless Chromium and one page, driven over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        import websocket  # websocket-client

        flags = [
            *FLAGS,
            "--no-proxy-server",  # the page is on 127.0.0.1
            "--window-size=1280,900",
            "--remote-debugging-port=0",  # any free port: Chromium writes it to the profile
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            [CHROMIUM, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and self.proc.poll() is None, "no Chromium"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with OPENER.open(f"http://127.0.0.1:{port}/json/list", timeout=WAIT) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=WAIT, suppress_origin=True
        )
        self.next_id = 0

    def send(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, (method, message["error"])
                return message["result"]

    def js(self, expression: str):
        """The value of `expression` in the page (a promise is awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def until(self, expression: str, what: str):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {self.js('$(`error`).textContent')}")

    def shot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(30)


def canvas(b: Browser, pane: str) -> str:
    """A digest of the pixels pane `pane`'s canvas shows."""
    data = b.js(
        f"Array.from(document.getElementById('canvas-{pane}').getContext('2d')"
        ".getImageData(0, 0, 272, 272).data).join(',')"
    )
    return hashlib.sha256(data.encode()).hexdigest()


def change(b: Browser, element: str, value: str, event: str = "change") -> None:
    """Set a control as a user would, then wait for the pane's map to arrive."""
    b.js("$('meta-a').textContent = 'asked'")
    b.js(
        f"(() => {{ const e = $('{element}'); e.value = {json.dumps(value)}; "
        f"e.dispatchEvent(new Event('{event}')); }})()"
    )


def map_loaded(b: Browser, what: str) -> None:
    b.until("$('meta-a').textContent.startsWith('explains')", what)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from test_view import write_folder  # the folder a report writes, in its formats

    opened = open_model(ModelConfig("shipped"), "sample", "cpu", False)
    root = write_folder(tmp_path_factory.mktemp("view-browser") / "report", opened)
    (root.parent / "secret.txt").write_text("SECRET-CONTENT")
    running = serve(open_folder(root, data=opened.data))
    yield running
    running.stop()


def test_the_viewer_in_a_browser(served, tmp_path):
    shots = [tmp_path]
    if os.environ.get("CAMLENS_VIEW_SHOTS"):
        shots.append(Path(os.environ["CAMLENS_VIEW_SHOTS"]))
    b = Browser(tmp_path / "profile")
    try:
        b.send("Page.enable")
        b.send(  # the screenshots' size, whatever the window's frame takes
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        b.send("Page.navigate", url=served.url)
        # open the page: the mistakes are listed
        rows = b.until("document.querySelectorAll('#rows li').length", "the rows")
        _, page = served_rows(served)
        assert rows == len(page) and b.js("$('count').textContent") == (
            f"1\u2013{len(page)} of {len(page)}"
        )
        # pick a mistake: its image, maps and bars appear, with the failed check beside map A
        b.js("document.querySelector('#rows li').click()")
        map_loaded(b, "map A of the first mistake")
        b.until("$('meta-b').textContent.startsWith('explains')", "map B")
        assert b.js("$('title').textContent").startswith("test image #")
        assert b.js("document.querySelectorAll('#bars div').length") >= 5
        assert "worse than the random map" in b.js("$('trust-a').textContent")
        assert b.js("document.querySelectorAll('#trust-a .warn').length") == 1
        assert b.js("$('cards').querySelector('img').complete")
        for d in shots:
            b.shot(d / "view-mistake.png")
        first = canvas(b, "a")
        # switch the layer: other pixels
        change(b, "layer-a", "layer3")
        map_loaded(b, "map A at layer3")
        at_layer3 = canvas(b, "a")
        assert at_layer3 != first
        # switch the method: other pixels
        change(b, "method-a", "gradcam++")
        map_loaded(b, "map A of gradcam++")
        other_method = canvas(b, "a")
        assert other_method not in (first, at_layer3)
        # the transparency slider redraws at once, without asking the server
        b.js("$('alpha').value = '0.9'; $('alpha').dispatchEvent(new Event('input'))")
        lighter = canvas(b, "a")
        assert lighter != other_method
        b.js("$('alpha').value = '0.5'; $('alpha').dispatchEvent(new Event('input'))")
        assert canvas(b, "a") == other_method  # back where it was: the map itself unchanged
        # the counterfactual line
        b.js("$('cf-run').click()")
        b.until("$('cf-line').textContent.includes('now predicted')", "the counterfactual")
        # upload an image through the page's file input
        photo = tmp_path / "photo.png"
        Image.new("RGB", (120, 80), (30, 140, 220)).save(photo)
        upload(b, photo)
        b.until("$('title').textContent.includes('an upload')", "the upload")
        map_loaded(b, "the upload's map")
        assert b.js("$('error').style.display") == "none"
        for d in shots:
            b.shot(d / "view-upload.png")
        # a bad upload: one line in the page, and the server still answers
        junk = tmp_path / "junk.png"
        junk.write_bytes(b"not a picture")
        upload(b, junk)
        b.until("$('error').textContent.startsWith('upload refused')", "the refusal")
        assert "cannot read junk.png" in b.js("$('error').textContent")
        # a path outside the folder, asked by the page: refused by the gate (403); the
        # browser itself resolves a literal %2e%2e segment to the site's root (no route: 404)
        status = b.js(
            "Promise.all(['files/..%2fsecret.txt', 'files/%2e%2e/secret.txt'].map((u) => "
            "fetch(u).then(async (r) => r.status + ' ' + (await r.text()))))"
        )
        assert status[0].startswith("403 ") and "inside the opened folder" in status[0], status
        assert status[1].startswith(("403 ", "404 ")) and "SECRET" not in "".join(status)
        assert b.js("fetch('api/info').then((r) => r.status)") == 200
    finally:
        b.close()
    png = Image.open(io.BytesIO((tmp_path / "view-mistake.png").read_bytes()))
    assert png.size == (1280, 900)


def served_rows(served) -> tuple[int, list]:
    with OPENER.open(served.url + "api/rows?limit=200", timeout=WAIT) as r:
        page = json.load(r)
    return page["total"], page["rows"]


def upload(b: Browser, path: Path) -> None:
    """Set the page's file input to `path`, as a user choosing the file would."""
    root = b.send("DOM.getDocument")["root"]["nodeId"]
    node = b.send("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    b.js("$('title').textContent = 'uploading'")
    b.send("DOM.setFileInputFiles", files=[str(path)], nodeId=node)
