"""camlens view: every endpoint against a live server on the shipped model and the sample, the
folder a report writes (faked in its real formats), the path gate, uploads, and the shared
model under threads. The extra camlens[view] (starlette, uvicorn) is in [dev]: no skip."""

import csv
import http.client
import io
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.classifier import ModelConfig, open_model
from camlens.evaluate import find_mistakes, predict, write_mistakes
from camlens.plan import ExplainError
from camlens.view import open_folder, open_viewer
from camlens.view.folder import Refused, inside, read_folder
from camlens.view.rows import Query, Rows
from camlens.view.server import serve
from camlens.view.upload import MAX_BYTES

# the proxy the environment may name must not see 127.0.0.1
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, data: bytes | None = None, headers: dict | None = None):
    """(status, json or text) of one request; a 4xx is an answer, not an exception."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with OPENER.open(req, timeout=120) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


@pytest.fixture(scope="module")
def opened():
    return open_model(ModelConfig("shipped"), "sample", "cpu", False)


def write_folder(root: Path, opened) -> Path:
    """What `camlens report --model shipped --data sample --compare` leaves, in its formats:
    eval/metrics.json, misclassified.csv + .safetensors, a gallery's index.csv with the
    counterfactual columns and a card, compare.json with a failed check for gradcam layer4."""
    data = opened.data
    logits = predict(opened.model, data.test.images[:200], 64)
    mistakes = find_mistakes(logits, data.test.labels[:200])
    (root / "eval").mkdir(parents=True)
    facts = {"model": "shipped", "data": data.source}
    (root / "eval" / "metrics.json").write_text(json.dumps(facts))
    write_mistakes(mistakes, data.classes, root / "eval" / "misclassified.csv")
    gallery = root / "gallery" / "gradcam"
    (gallery / "cards").mkdir(parents=True)
    header = ["index", "label", "pred", "card", "cf10_drop", "cf10_left", "cf10_to_true"]
    rows = [header]
    for i, (index, t, p) in enumerate(
        zip(*(c.tolist() for c in (mistakes.indices, mistakes.labels, mistakes.preds)), strict=True)
    ):
        card = f"cards/{i + 1:04d}_{index:05d}.png"
        pixels = data.test.images[index].permute(1, 2, 0).numpy()  # (3, S, S) -> (S, S, 3)
        Image.fromarray(pixels).resize((96, 96)).save(gallery / card)  # a card stand-in
        # the first mistake moves to its true class, the second leaves, the rest stay
        rows.append([index, data.classes[t], data.classes[p], card, 3.0 - i, i == 1, i == 0])
    with open(gallery / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    compare = {
        "grid": {
            "rows": [
                {"method": "gradcam", "layer": "layer4", "subset": "grid", "metric": "share",
                 "mean": 0.88, "ci_low": 0.86, "ci_high": 0.9, "n": 63}
            ],
            "paired": [],
        },
        "paired": [
            {"method": "gradcam", "layer": "layer4", "subset": "mistakes", "metric": "deletion",
             "vs": "random", "decision": "worse"},
            {"method": "gradcam", "layer": "layer3", "subset": "mistakes", "metric": "deletion",
             "vs": "random", "decision": "better"},
        ],
        "sanity": {"gradcam": {"layer": "layer4", "state": "passes"}},
        "verdicts": {"passes": "fine"},
    }  # fmt: skip
    (root / "compare.json").write_text(json.dumps(compare))
    return root


def write_maps(root: Path, opened) -> Path:
    """OUT/maps/gradcam.safetensors, as `--output maps` writes it, for the folder's mistakes."""
    from camlens.evaluate import read_mistakes
    from camlens.explain import ExplainPlan, mistake_maps
    from camlens.mapfile import MapFile

    mistakes = read_mistakes(root / "eval" / "misclassified.csv", opened.data.test)
    plan = ExplainPlan(layers=("layer3", "layer4"))
    expl = mistake_maps(opened.model, mistakes.images, mistakes.labels, plan, "gradcam")
    return MapFile(root / "maps" / "gradcam.safetensors", mistakes).close(expl)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, opened) -> Path:
    root = tmp_path_factory.mktemp("view") / "report"
    write_folder(root, opened)
    secret = root.parent / "secret.txt"
    secret.write_text("SECRET-CONTENT")
    (root / "link.txt").symlink_to(secret)  # a symlink that points out of the folder
    (root / "inner.txt").write_text("inside")
    return root


@pytest.fixture(scope="module")
def server(folder, opened):
    viewer = open_folder(folder, data=opened.data)
    running = serve(viewer)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def live(opened):
    """A viewer opened on the model and data directly (no folder)."""
    running = serve(open_viewer(opened.model, opened.data))
    yield running
    running.stop()


def first_mistake(url: str) -> dict:
    status, page = get(url + "api/rows?limit=1")
    assert status == 200, page
    return page["rows"][0]


def test_info_offers_every_method_and_layer(server):
    status, info = get(server.url + "api/info")
    assert status == 200
    assert info["layers"][:2] == ["layer4", "layer3"]  # a camlens model: its defaults first
    assert "layer2.0.conv1" in info["layers"] and info["methods"][0] == "gradcam"
    assert len(info["methods"]) == 21 and info["has_cf"] and info["has_compare"]
    assert len(info["colormaps"]["jet"]) == 256


def test_the_page_is_served(server):
    status, page = get(server.url)
    assert status == 200 and b"camlens view" in page and b'id="alpha"' in page


def test_rows_are_the_folders_mistakes_filtered_sorted_and_paged(server, folder):
    mistakes = read_folder(folder).mistakes
    status, page = get(server.url + "api/rows?limit=3&offset=1")
    assert status == 200 and page["total"] == len(mistakes) and len(page["rows"]) == 3
    conf = [r["confidence"] for r in page["rows"]]
    assert conf == sorted(conf, reverse=True)
    _, all_ = get(server.url + f"api/rows?limit={len(mistakes)}")
    assert [r["index"] for r in all_["rows"]][1:4] == [r["index"] for r in page["rows"]]
    cat = all_["rows"][0]["label"]
    _, cats = get(server.url + f"api/rows?label={cat}&limit=200")
    assert cats["total"] == sum(r["label"] == cat for r in all_["rows"]) > 0
    assert all(r["label"] == cat for r in cats["rows"])
    cell = all_["rows"][0]
    _, one = get(server.url + f"api/rows?label={cell['label']}&pred={cell['pred']}&limit=200")
    assert all((r["label"], r["pred"]) == (cell["label"], cell["pred"]) for r in one["rows"])
    _, sure = get(server.url + "api/rows?conf_min=0.9&limit=200")
    assert all(r["confidence"] >= 0.9 for r in sure["rows"])
    _, margin = get(server.url + "api/rows?sort=margin&limit=200")
    assert [r["margin"] for r in margin["rows"]] == sorted(
        (r["margin"] for r in margin["rows"]), reverse=True
    )


def test_counterfactual_verdicts_filter_and_sort(server):
    _, to_true = get(server.url + "api/rows?cf=to_true")
    _, left = get(server.url + "api/rows?cf=left")
    assert to_true["total"] == 1 and left["total"] == 1
    _, by_drop = get(server.url + "api/rows?sort=cf_drop&limit=3")
    assert [r["cf_drop"] for r in by_drop["rows"]] == [3.0, 2.0, 1.0]
    status, bad = get(server.url + "api/rows?cf=maybe")
    assert status == 400 and "unknown verdict" in bad["error"]


def test_correct_images_on_request(server):
    _, wrong = get(server.url + "api/rows")
    _, every = get(server.url + "api/rows?correct=1&limit=200")
    assert every["total"] == 1000 > wrong["total"]
    assert any(r["label"] == r["pred"] for r in every["rows"])


def test_rows_page_at_imagenet_size_without_a_row_loop():
    """50,000 rows and 1,000 classes: a page is one mask and one sort, whatever N."""
    n, k = 50_000, 1000
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, k, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    rows = Rows.of_logits(logits, labels)
    classes = [f"c{i}" for i in range(k)]
    total, page = rows.page(Query(limit=50), classes)
    assert total == int((logits.argmax(1) != labels).sum()) and len(page) == 50
    total, page = rows.page(Query(label=3, correct=True, sort="index"), classes)
    assert total == int((labels == 3).sum()) and [r["index"] for r in page] == sorted(
        r["index"] for r in page
    )


def test_image_has_bars_with_the_truth_and_its_gallery_card(server):
    row = first_mistake(server.url)
    status, img = get(server.url + f"api/image/t{row['index']}")
    assert status == 200 and img["label"] == row["label"] and img["pred"] == row["pred"]
    assert len(img["bars"]) >= 5 and any(b["truth"] for b in img["bars"])
    assert img["bars"][0]["class"] == row["pred"]
    card = img["cards"]["gradcam"]
    status, png = get(server.url + "files/" + card)
    assert status == 200 and png[:4] == b"\x89PNG"


def map_pixels(url: str, **query) -> np.ndarray:
    status, m = get(url + "api/map?" + urllib.parse.urlencode(query))
    assert status == 200, m
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(m["png"]))))


def test_maps_differ_by_layer_method_and_target_and_are_cached(server):
    key = "t" + str(first_mistake(server.url)["index"])
    base = {"image": key, "method": "gradcam", "layer": "layer4", "target": "pred"}
    a = map_pixels(server.url, **base)
    assert a.shape == (32, 32) and a.max() == 255  # min-max normalised
    for change in ({"layer": "layer3"}, {"method": "gradcam++", "layer": "layer3"},
                   {"target": "true"}):  # fmt: skip
        assert not np.array_equal(a, map_pixels(server.url, **{**base, **change})), change
    _, again = get(server.url + "api/map?" + urllib.parse.urlencode(base))
    assert again["cached"] and again["explains"]
    q = f"api/map?image={key}&method=gradcam&layer=layer4&target=contrast"
    _, contrast = get(server.url + q)
    assert contrast["signed"] and "rather than" in contrast["explains"]


def test_the_layer_is_part_of_the_cache_key(server):
    """A cache keyed without the layer would give layer3's request layer4's map."""
    key = "t" + str(first_mistake(server.url)["index"])
    q = f"api/map?image={key}&method=xgradcam&target=pred&layer="
    _, four = get(server.url + q + "layer4")
    _, three = get(server.url + q + "layer3")
    assert not three["cached"] and three["png"] != four["png"]


def test_trust_beside_the_map_warns_where_compare_failed(server):
    key = "t" + str(first_mistake(server.url)["index"])
    _, m4 = get(server.url + f"api/map?image={key}&method=gradcam&layer=layer4")
    assert m4["trust"]["grid"][0]["mean"] == 0.88
    assert m4["trust"]["warnings"] == ["worse than the random map (deletion on mistakes)"]
    _, m3 = get(server.url + f"api/map?image={key}&method=gradcam&layer=layer3")
    assert m3["trust"]["scored"] and m3["trust"]["warnings"] == []
    _, other = get(server.url + f"api/map?image={key}&method=eigencam&layer=layer3")
    assert other["trust"]["scored"] is False


def test_map_errors_are_one_line(server):
    key = "t" + str(first_mistake(server.url)["index"])
    for query, words in (
        (f"image={key}&method=nope&layer=layer4", "unknown method"),
        (f"image={key}&method=gradcam&layer=fc.x", "unknown layer"),
        (f"image={key}&method=scorecam&layer=layer4&target=contrast", "contrast"),
        ("image=t99999&method=gradcam&layer=layer4", "no test image"),
        (f"image={key}&method=gradcam&layer=layer4&target=banana", "unknown target"),
    ):
        status, body = get(server.url + "api/map?" + query)
        assert status == 400 and words in body["error"] and "\n" not in body["error"], query


def test_an_unknown_method_is_refused_by_the_plans_one_rule(opened):
    """The page's methods are checked as a plan's are (plan.check_methods), in one line."""
    with pytest.raises(ExplainError, match=r"^unknown method 'nope': choose from gradcam, "):
        open_viewer(opened.model, opened.data, methods=["gradcam", "nope"])


def test_counterfactual_removes_the_top_and_asks_again(server):
    key = "t" + str(first_mistake(server.url)["index"])
    q = f"image={key}&method=gradcam&layer=layer4&target=contrast&fraction="
    status, cf = get(server.url + "api/counterfactual?" + q + "0.2")
    assert status == 200 and cf["fraction"] == 0.2 and "removing 20%" in cf["line"]
    assert cf["margin_after"] != cf["margin"]
    status, bad = get(server.url + "api/counterfactual?" + q + "1.5")
    assert status == 400 and "between 0 and 1" in bad["error"]


def png_bytes(size=(40, 30), color=(0, 120, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_is_preprocessed_and_explained(server):
    status, img = get(server.url + "api/upload", png_bytes(), {"X-Filename": "blue.png"})
    assert status == 200 and img["key"].startswith("u") and img["label"] is None
    pixels = np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(img["png"]))))
    assert pixels.shape == (32, 32, 3)  # resized and centre-cropped as the data's images
    status, m = get(server.url + f"api/map?image={img['key']}&method=gradcam&layer=layer4")
    assert status == 200 and not m["signed"]
    status, no = get(server.url + f"api/map?image={img['key']}&target=true")
    assert status == 400 and "no true class" in no["error"]


def raw_post(port: int, path: str, length: int) -> tuple[int, bytes]:
    """POST headers declaring `length` bytes, send none: the answer comes from the headers."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
            "X-Filename: big.png\r\n\r\n".encode()
        )
        answer = http.client.HTTPResponse(s)
        answer.begin()
        return answer.status, answer.read()


def test_an_upload_over_the_limit_is_refused_unread():
    from camlens.data import Preprocess
    from camlens.view.upload import UploadError, read_upload

    with pytest.raises(UploadError, match="limited to 10 MB"):
        read_upload(b"x" * (MAX_BYTES + 1), "big.png", Preprocess(32))


def bomb(side: int) -> bytes:
    """A 16 x 16 PNG whose header says side x side (its CRC rewritten to match)."""
    import struct
    import zlib

    data = bytearray(png_bytes((16, 16)))
    data[16:24] = struct.pack(">II", side, side)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_bad_uploads_get_one_line_and_the_server_keeps_running(server, monkeypatch):
    status, body = get(server.url + "api/upload", b"not an image", {"X-Filename": "a.png"})
    assert status == 400 and "cannot read a.png" in body["error"]
    status, body = get(server.url + "api/upload", b"", {"X-Filename": "e.png"})
    assert status == 400 and "empty" in body["error"]
    # a body over the limit is refused on its declared length, before it is read
    status, body = raw_post(server.port, "/api/upload", MAX_BYTES + 1)
    assert status == 413 and b"10 MB" in body
    # decompression bombs: small files whose headers claim 64 and 3,600 megapixels (the
    # second over PIL's own limit too)
    for side in (8_000, 60_000):
        status, body = get(server.url + "api/upload", bomb(side), {"X-Filename": "bomb.png"})
        assert status == 400 and "megapixels" in body["error"], side
    assert get(server.url + "api/info")[0] == 200


def test_the_bomb_guard_of_pil_itself_is_an_error(monkeypatch):
    """Under the header check, PIL's own MAX_IMAGE_PIXELS warning is refused, not decoded."""
    from camlens.data import Preprocess
    from camlens.view.upload import UploadError, read_upload

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UploadError, match="decompression bomb"):
        read_upload(png_bytes((12, 12)), "x.png", Preprocess(32))  # 144 px: a warning only


@pytest.mark.parametrize(
    "path",
    [
        "../secret.txt",
        "..%2fsecret.txt",
        "%2e%2e/secret.txt",
        "%2E%2E%2Fsecret.txt",
        "gallery/../../secret.txt",
        "link.txt",  # a symlink inside that points outside
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "..\\secret.txt",
    ],
)
def test_no_file_outside_the_folder_can_be_read(server, path):
    status, body = get(server.url + "files/" + path)
    assert status == 403, (path, status)
    assert "SECRET" not in str(body) and "root:" not in str(body)


def test_a_file_inside_the_folder_is_served(server):
    assert get(server.url + "files/inner.txt") == (200, b"inside")
    assert get(server.url + "files/eval/metrics.json")[0] == 200


def test_the_path_gate(folder):
    assert inside(folder, "inner.txt") == (folder / "inner.txt").resolve()
    for path in ("../secret.txt", "link.txt", "/etc/passwd", "a/../inner.txt", "C:x", ""):
        with pytest.raises(Refused):
            inside(folder, path)
    with pytest.raises(FileNotFoundError):
        inside(folder, "missing.txt")


def test_without_a_folder_files_are_refused(live):
    status, body = get(live.url + "files/inner.txt")
    assert status == 403 and "no folder" in body["error"]
    _, info = get(live.url + "api/info")
    assert info["folder"] is None and not info["has_compare"]
    _, rows = get(live.url + "api/rows")
    assert rows["total"] == 80  # the shipped model's mistakes on the sample, predicted


def test_two_tabs_at_once_get_their_own_maps(opened):
    """Threads asking for different layers and methods at once each get the map one thread
    alone gets; the model is left with no hook. Without Viewer.lock the engines' hooks
    interleave on the shared model and maps come back wrong or the call fails."""
    viewer = open_viewer(opened.model, opened.data)
    running = serve(viewer)
    try:
        keys = [f"t{i}" for i in range(6)]
        asks = [(k, m, la) for k in keys for m in ("gradcam", "layercam")
                for la in ("layer3", "layer4")]  # fmt: skip
        alone = {}
        for k, m, la in asks:
            alone[(k, m, la)] = viewer.cam(viewer.image(k), m, la, "pred")[0]
        viewer.maps = type(viewer.maps)(viewer.maps.size)  # forget them: compute again
        got, errors = {}, []

        def tab(items):
            for k, m, la in items:
                status, body = get(running.url + f"api/map?image={k}&method={m}&layer={la}")
                if status != 200:
                    errors.append(body)
                got[(k, m, la)] = body

        threads = [threading.Thread(target=tab, args=(asks[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:2]
        import base64

        for ask, body in got.items():
            pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["png"]))))
            want = (alone[ask].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            assert np.array_equal(pixels, want), ask
        hooks = [
            len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
            for m in opened.model.modules()
        ]
        assert sum(hooks) == 0
    finally:
        running.stop()


def test_another_host_prints_a_warning(opened, capsys):
    running = serve(open_viewer(opened.model, opened.data), host="0.0.0.0")
    running.stop()
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err


def test_the_folder_names_its_model_and_data(folder):
    found = read_folder(folder)
    assert found.model == "shipped" and found.data == "sample"
    assert found.cf is not None and found.compare is not None
    assert all(p.startswith("gallery/gradcam/cards/") for p in found.cards["gradcam"].values())


def test_without_the_extra_the_command_names_it(monkeypatch, capsys):
    from camlens.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if camlens[view] were missing
    assert main(["view", "--model", "shipped", "--data", "sample"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "camlens: error: camlens view needs its web server: pip install 'camlens[view]'"


def test_the_command_needs_a_folder_or_a_model_and_data(capsys, tmp_path):
    from camlens.cli import main

    assert main(["view", "--model", "shipped"]) == 2
    assert "camlens view RUN" in capsys.readouterr().err
    assert main(["view", str(tmp_path)]) == 2  # a folder that names no model
    assert "pass --model SPEC --data DATA" in capsys.readouterr().err


def test_the_command_serves_a_folder_until_stopped(folder, monkeypatch, capsys):
    """`camlens view RUN` opens the folder's model and data and blocks in `wait`."""
    from camlens.cli import main
    from camlens.view import server as server_module

    served = []

    def wait(self):
        served.append(get(self.url + "api/rows?limit=1"))
        self.stop()

    monkeypatch.setattr(server_module.Running, "wait", wait)
    assert main(["view", str(folder), "--port", "0", "--device", "cpu"]) == 0
    assert "camlens view: http://127.0.0.1:" in capsys.readouterr().out
    assert served[0][0] == 200 and served[0][1]["total"] > 0


def test_view_from_python_serves_in_a_thread_and_stops(opened, monkeypatch):
    """camlens.view returns at once (the kernel is free), shows inline, and stops; in Colab
    it hands the port to Colab's kernel proxy instead of an iframe of 127.0.0.1."""
    import types

    import camlens

    asked = []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(
        serve_kernel_port_as_iframe=lambda port, height: asked.append(port)
    )
    running = camlens.view(opened.model, opened.data)
    try:
        assert running.url.startswith("http://127.0.0.1:") and running.thread.is_alive()
        assert f'<iframe src="{running.url}"' in running._repr_html_()
        assert get(running.url + "api/info")[0] == 200
    finally:
        running.stop()
    assert not running.thread.is_alive()
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    in_colab = camlens.view("shipped", "sample")
    in_colab.stop()
    assert asked == [in_colab.port] and "<iframe" not in in_colab._repr_html_()


def test_a_request_for_another_host_name_is_refused(server):
    """DNS rebinding: a page of evil.example pointed at 127.0.0.1 gets no answer."""
    status, _ = get(server.url + "api/info", headers={"Host": "evil.example"})
    assert status == 400
    port = server.port
    assert get(server.url + "api/info", headers={"Host": f"localhost:{port}"})[0] == 200


def test_a_taken_port_is_one_line(folder, capsys):
    import socket

    from camlens.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["view", str(folder), "--port", str(port), "--device", "cpu"]) == 2
    assert "--port 0 picks a free port" in capsys.readouterr().err


def test_the_folders_maps_file_is_reused_and_matches_a_computed_map(tmp_path, opened):
    root = write_folder(tmp_path / "run", opened)
    write_maps(root, opened)
    stored_viewer = open_folder(root, data=opened.data)
    computing = open_viewer(opened.model, opened.data)
    index = int(stored_viewer.rows().indices[0])
    key = f"t{index}"
    for target in ("pred", "true", "contrast"):
        for layer in ("layer3", "layer4"):
            stored, how = stored_viewer.cam(stored_viewer.image(key), "gradcam", layer, target)
            fresh, _ = computing.cam(computing.image(key), "gradcam", layer, target)
            assert how.get("stored"), (target, layer)
            assert torch.allclose(stored, fresh, atol=1e-4), (target, layer)
    _, how = stored_viewer.cam(stored_viewer.image(key), "gradcam", "layer2", "pred")
    assert not how.get("stored")  # a layer the file does not hold: computed
