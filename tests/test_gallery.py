import csv
import io
import json
import signal
import subprocess
import sys
import zlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from camlens.evaluate import as_float_images
from camlens.explain import (
    ExplainPlan,
    mistake_counterfactual,
    mistake_maps,
    stream_mistake_maps,
)
from camlens.gallery import GalleryConfig, stream_gallery, write_gallery
from camlens.gallery import write as gallery_write
from camlens.gallery.draw import GAP, CardLayout, render_text
from camlens.gallery.png import adler32_combine, deflate_rows, png_of
from camlens.metrics.counterfactual import CounterfactualConfig, counterfactual

CLASSES = tuple(f"k{i}" for i in range(5))


def test_gallery_files_and_index(tmp_path, tiny_mistakes):
    model, m = tiny_mistakes
    expl = mistake_maps(model, m.images, m.labels, ExplainPlan(layers=["layer4"]))
    root = write_gallery(expl, m, CLASSES, tmp_path, GalleryConfig(per_page=4, size=64))
    assert root == tmp_path / "gallery" / "gradcam"  # one folder per method, side by side
    rows = list(csv.DictReader((root / "index.csv").read_text().splitlines()))
    assert [int(r["index"]) for r in rows] == m.indices.tolist()
    for r in rows:
        assert (root / r["card"]).is_file() and (root / r["page"]).is_file()
        assert r["label"] != r["pred"]
    assert len(list((root / "pages").iterdir())) == -(-len(m) // 4)
    pairs = {(int(a), int(b)) for a, b in zip(m.labels, m.preds, strict=True)}
    assert len(list((root / "pairs").iterdir())) == len(pairs)
    card = Image.open(root / rows[0]["card"])
    assert card.width >= 4 * 64 and card.height >= 64  # four panels of 64 px, plus the bars
    meta = json.loads((root / "gallery.json").read_text())
    assert meta["map_resolutions"] == {"layer4": [4, 4]}
    assert [float(r["layer4_label_max"]) for r in rows] == pytest.approx(
        expl.label_max[0].tolist(), rel=1e-5
    )


def test_gallery_needs_images(tmp_path, tiny_mistakes):
    model, m = tiny_mistakes
    expl = mistake_maps(model, m.images, m.labels, ExplainPlan(layers=["layer4"]))
    bare = replace(m, images=None)
    with pytest.raises(ValueError, match="read_mistakes"):
        write_gallery(expl, bare, CLASSES, tmp_path)


LAYERS = ["layer3", "layer4"]
# chunks of 6 maps; with the counterfactual test, so resuming covers its columns and lines
PLAN = ExplainPlan(layers=LAYERS, cam_batch_size=3, chunk_size=5, counterfactual=True)
SMALL = GalleryConfig(per_page=4, per_pair_page=2, size=32)  # pages straddle chunks of 6


# Exact by construction, on any CPU: one process at one thread count, chunks of whole CAM
# batches (stream_mistake_maps), the counterfactual a CAM batch at a time
# (mistake_counterfactual), so each card is drawn from the same floats however the run was cut
# or resumed. Across thread counts or processes, the same holds to fp32 rounding
# (test_distributed, conftest.assert_same_folders).
def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _chunks(model, m, stop=None):
    """The maps of `m` in chunks of 6; with `stop`, the run dies after that many chunks."""
    for k, chunk in enumerate(stream_mistake_maps(model, m, PLAN)):
        if k == stop:
            raise KeyboardInterrupt("killed")
        yield chunk


@pytest.mark.layout
def test_streamed_gallery_equals_the_one_drawn_at_once(tmp_path, tiny_mistakes):
    model, m = tiny_mistakes
    expl = mistake_maps(model, m.images, m.labels, PLAN, preds=m.preds)
    # the test of all rows at once equals the chunks' (per-image seeds)
    expl = replace(expl, counterfactual=mistake_counterfactual(model, m, expl, PLAN))
    at_once = write_gallery(expl, m, CLASSES, tmp_path / "once", SMALL)
    streamed = stream_gallery(_chunks(model, m), m, "gradcam", CLASSES, tmp_path / "s", SMALL)
    assert len(m) > 2 * 6  # three chunks or more
    assert _files(streamed.folder) == _files(at_once)  # cards, pages, pairs, index, json
    assert len(list((at_once / "pairs").iterdir())) > len(
        {(int(a), int(b)) for a, b in zip(m.labels, m.preds, strict=True)}
    )  # a pair larger than per_pair_page went over several pages


@pytest.mark.layout
def test_a_killed_gallery_run_again_is_complete_and_keeps_its_cards(
    tmp_path, tiny_mistakes, monkeypatch
):
    model, m = tiny_mistakes
    clean = stream_gallery(_chunks(model, m), m, "gradcam", CLASSES, tmp_path / "clean", SMALL)
    with pytest.raises(KeyboardInterrupt):
        stream_gallery(_chunks(model, m, stop=2), m, "gradcam", CLASSES, tmp_path / "k", SMALL)
    root = tmp_path / "k" / "gallery" / "gradcam"
    assert not (root / "index.csv").exists()  # no index of a gallery that is not there
    assert json.loads((root / "gallery.json").read_text())["complete"] is False
    finished = len(list((root / "cards").glob("*.png")))
    assert 0 < finished < len(m)
    (root / "cards" / ".0001_x.png.abc.tmp").write_bytes(b"half")  # a SIGKILL mid-write
    (root / "pages" / "page-001.png").unlink()  # its cards are read back, not redrawn
    drawn, draw = [], gallery_write.draw_card

    def counted(i, **kw):
        drawn.append(i)
        return draw(i, **kw)

    monkeypatch.setattr(gallery_write, "draw_card", counted)
    stream_gallery(_chunks(model, m), m, "gradcam", CLASSES, tmp_path / "k", SMALL)
    assert len(drawn) == len(m) - finished
    assert _files(root) == _files(clean.folder)  # the tmp file is gone, every file whole


def test_another_job_in_the_same_folder_starts_afresh(tmp_path, tiny_mistakes):
    """Cards of a different job (here: other drawing settings) must not pass for this one's."""
    model, m = tiny_mistakes
    first = GalleryConfig(per_page=2, per_pair_page=2, size=32)
    stream_gallery(_chunks(model, m), m, "gradcam", CLASSES, tmp_path / "k", first)
    other = GalleryConfig(per_page=3, per_pair_page=2, size=24)
    fresh = stream_gallery(_chunks(model, m), m, "gradcam", CLASSES, tmp_path / "f", other)
    again = stream_gallery(_chunks(model, m), m, "gradcam", CLASSES, tmp_path / "k", other)
    assert _files(again.folder) == _files(fresh.folder)  # and the first's extra pages are gone


def test_joined_png_rows_decode_to_the_stacked_pictures():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (h, 9, 3), dtype=np.uint8) for h in (5, 3))
    b[:, :4] = a[-1, :4]  # rows that repeat across the join: a filter must not look across it
    png = png_of([deflate_rows(a), deflate_rows(b, level=6), deflate_rows(a)])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.concatenate([a, b, a]))
    x, y = rng.bytes(70000), rng.bytes(5)
    assert adler32_combine(zlib.adler32(x), zlib.adler32(y), 5) == zlib.adler32(x + y)
    assert adler32_combine(1, zlib.adler32(x), len(x)) == zlib.adler32(x)  # 1: of nothing


# a gallery written in a process of its own, which SIGKILLs itself right after the card file
# numbered argv[2] is renamed into place (0: never); one worker writes the cards in row order
GALLERY_PROCESS = """
import os, signal, sys
from dataclasses import replace
import torch
from camlens.evaluate import find_mistakes, predict
from camlens.explain import ExplainPlan, stream_mistake_maps
from camlens.gallery import GalleryConfig, stream_gallery
from camlens.gallery import write as gallery_write
from camlens.model import ResNet18

out, kill_after = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
torch.manual_seed(0)
model = ResNet18(5, width=8).eval()
images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
m = find_mistakes(predict(model, images), torch.arange(30) % 5)
m = replace(m, images=images[m.indices])
cards, write = [], gallery_write.atomic_write_bytes

def write_then_die(path, data, **kw):
    write(path, data, **kw)
    if path.parent.name == "cards":
        cards.append(path)
        if len(cards) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

gallery_write.atomic_write_bytes = write_then_die
sizes = []
plan = ExplainPlan(layers=("layer3", "layer4"), cam_batch_size=3, chunk_size=5, counterfactual=True)
chunks = stream_mistake_maps(model, m, plan)
config = GalleryConfig(per_page=4, per_pair_page=2, size=32)
stream_gallery(
    (sizes.append(len(c[0])) or c for c in chunks), m, "gradcam", tuple(f"k{i}" for i in range(5)),
    out, config, workers=1,
)
print(len(m), *sizes)
"""


def _gallery_process(out, kill_after=0):
    argv = [sys.executable, "-c", GALLERY_PROCESS, str(out), str(kill_after)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


@pytest.mark.layout
def test_a_gallery_sigkilled_inside_a_chunk_resumes_to_the_same_bytes(tmp_path):
    clean = _gallery_process(tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    total, first, second, *_ = map(int, clean.stdout.split())
    kill_after = first + second // 2  # halfway through the second chunk's cards
    killed = _gallery_process(tmp_path / "k", kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    root = tmp_path / "k" / "gallery" / "gradcam"
    assert json.loads((root / "gallery.json").read_text())["complete"] is False
    assert len(list((root / "cards").glob("*.png"))) == kill_after  # some of a chunk, not all
    resumed = _gallery_process(tmp_path / "k")
    assert resumed.returncode == 0, resumed.stderr
    # exact: the three processes run at one thread on the same batches (GALLERY_PROCESS)
    assert _files(root) == _files(tmp_path / "clean" / "gallery" / "gradcam")
    assert len(list((root / "cards").glob("*.png"))) == total


def test_index_and_cards_carry_the_counterfactual_of_the_contrast_map(tmp_path, tiny_mistakes):
    """index.csv's cf* columns and each card's verdict line are `counterfactual(...)` called
    directly on the same images, the deepest layer's contrast map and a paired random map."""
    model, m = tiny_mistakes
    g = stream_gallery(_chunks(model, m), m, "gradcam", CLASSES, tmp_path, SMALL)
    expl = g.explanations
    contrast = expl.contrast_maps[-1]  # (N, H, W): layer4's, in [-1, 1]
    config = CounterfactualConfig(resolution=expl.resolutions[-1], seed=PLAN.metric_seed)
    seeds = PLAN.metric_seed * 1_000_003 + m.indices
    x = as_float_images(m.images)
    want = counterfactual(model, x, contrast, m.preds, m.labels, config, seeds=seeds)
    rows = list(csv.DictReader((g.folder / "index.csv").read_text().splitlines()))
    assert {r["cf_region"] for r in rows} == {"contrast"}
    for r, w, line in zip(rows, want.rows(), want.verdicts(CLASSES), strict=True):
        for key in ("cf_margin", "cf10_drop", "cf10_drop_random", "cf20_drop", "cf5_drop"):
            assert float(r[key]) == pytest.approx(w[key], abs=2e-4), key
        for key in ("cf10_left", "cf10_to_true", "cf10_beat_random", "cf20_beat_random"):
            assert r[key] == str(w[key]), key
        assert r["cf10_pred"] == CLASSES[w["cf10_pred"]]
        assert r["cf_verdict"] == line
    # the test is not vacuous: on this untrained model the map beats random on some, not all
    beat = [r["cf10_beat_random"] for r in rows]
    assert "True" in beat and "False" in beat
    # each card's last line is its verdict, pixel for pixel
    layout = CardLayout.of(expl, CLASSES, SMALL)
    for r, line in list(zip(rows, want.verdicts(CLASSES), strict=True))[:3]:
        card = np.asarray(Image.open(g.folder / r["card"]).convert("L"))
        stamp = render_text(line, 10)
        h, w = stamp.shape[0], min(stamp.shape[1], card.shape[1] - GAP)
        y = layout.verdict_y
        assert np.array_equal(card[y : y + h, GAP : GAP + w], stamp[:, :w])


def test_a_method_without_contrast_map_tests_its_predicted_class_map(tmp_path, tiny_mistakes):
    model, m = tiny_mistakes
    plan = ExplainPlan(layers=["layer4"], methods=("layercam",), counterfactual=True)
    chunks = stream_mistake_maps(model, m, plan)
    g = stream_gallery(chunks, m, "layercam", CLASSES, tmp_path, SMALL)
    assert g.explanations.contrast_low is None
    rows = list(csv.DictReader((g.folder / "index.csv").read_text().splitlines()))
    assert {r["cf_region"] for r in rows} == {"predicted-class"}
    assert all("of the predicted-class region" in r["cf_verdict"] for r in rows)


def test_without_the_counterfactual_index_has_no_cf_columns(tmp_path, tiny_mistakes):
    model, m = tiny_mistakes
    plan = replace(PLAN, counterfactual=False)
    g = stream_gallery(stream_mistake_maps(model, m, plan), m, "gradcam", CLASSES, tmp_path, SMALL)
    header = (g.folder / "index.csv").read_text().splitlines()[0]
    assert "cf_" not in header and g.explanations.counterfactual is None


def test_pair_pages_drawn_in_batches_equal_a_batch_per_page(tmp_path, tiny_mistakes, monkeypatch):
    """Pair pages' overlays are made many pages to a batch (at 1,000 classes most pairs hold an
    image or two): the pages are the same bytes as with a batch per page."""
    model, m = tiny_mistakes
    expl = mistake_maps(model, m.images, m.labels, PLAN, preds=m.preds)
    batched = write_gallery(expl, m, CLASSES, tmp_path / "batched", SMALL)
    monkeypatch.setattr(gallery_write, "PAIR_BATCH", 1)  # each page its own batch
    alone = write_gallery(expl, m, CLASSES, tmp_path / "alone", SMALL)
    pages = {k: v for k, v in _files(batched).items() if k.parts[0] == "pairs"}
    assert len(pages) > 2 and pages == {
        k: v for k, v in _files(alone).items() if k.parts[0] == "pairs"
    }
    assert len(gallery_write._batches([("a", [0] * 3)] * 5, 7)) == 3  # 3 + 3 | 3 + 3 | 3
