import base64
import html as html_lib
import io
import json
import math
import re
from collections import Counter
from dataclasses import replace
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.cam import GradCAM
from camlens.data import Split
from camlens.evaluate import evaluate
from camlens.explain import ExplainPlan, mistake_maps, select_mistakes
from camlens.metrics import VERDICTS
from camlens.model import ResNet18
from camlens.report import (
    ReportConfig,
    RunFacts,
    centre_box,
    compute_report,
    mean_maps,
    outside_centre_share,
    render_html,
    render_report,
)

CLASSES = tuple(f"k{i}" for i in range(5))
RUN_INFO = {
    "data_label": "random test data",
    "checkpoint": "/tmp/none.safetensors",
    "device": "cpu",
    "homepage": "https://example.org/camlens",  # text, not a resource: must stay text
    "recipe": {"epochs": 2, "lr": 0.1},
}
HISTORY = [
    {"epoch": e, "train_loss": 2 / e, "test_loss": 2.2 / e, "train_acc": e / 4, "test_acc": e / 5}
    for e in (1, 2)
]


def _report(model, split, ev, plan=None, limit=None, **kwargs):
    """compute_report of the `limit` most confident mistakes, their maps as the gallery's."""
    plan = plan or ExplainPlan(layers=("layer3", "layer4"))
    shown = select_mistakes(ev.mistakes, CLASSES, limit=limit)
    shown = replace(shown, images=split.images[shown.indices])
    maps = {
        method: mistake_maps(model, shown.images, shown.labels, plan, method, shown.preds)
        for method in (plan.methods if len(shown) else ())
    }
    facts = RunFacts(**{k: kwargs.pop(k) for k in ("run_info", "history", "trust") if k in kwargs})
    return compute_report(
        model, split, CLASSES, plan, explained=(shown, maps), evaluation=ev, facts=facts, **kwargs
    )


class Page(HTMLParser):
    """The tags a test needs: every element's attributes, by tag, and texts of confusion cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[tuple[int, int, str]] = []
        self._cell: dict | None = None
        self.json = ""
        self._in_json = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "td" and "cell" in a.get("class", "").split():
            self._cell = {"t": int(a["data-label"]), "p": int(a["data-pred"]), "text": ""}
        self._in_json = tag == "script" and a.get("id") == "report-data"

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_json:
            self.json += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append((self._cell["t"], self._cell["p"], self._cell["text"]))
            self._cell = None
        if tag == "script":
            self._in_json = False

    def with_class(self, tag: str, cls: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag and cls in a.get("class", "").split()]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    torch.manual_seed(0)
    model = ResNet18(len(CLASSES), width=8).eval()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    labels = (torch.arange(40) % len(CLASSES)).to(torch.uint8)
    split = Split(images, labels)
    out = tmp_path_factory.mktemp("report")
    ev = evaluate(model, Split(images, labels.long()))
    path = render_report(_report(model, split, ev, run_info=RUN_INFO, history=HISTORY), out)
    page = Page()
    page.feed(path.read_text())
    return model, split, ev, out, path, page


def test_one_self_contained_file(case):
    _, _, _, out, path, page = case
    assert [p.name for p in out.iterdir()] == ["report.html"]
    text = path.read_text()
    refs = [a[k] for _, a in page.tags for k in ("src", "href") if k in a]
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs[:5]
    assert not [
        t for t, a in page.tags if t in ("link", "iframe") or (t == "script" and "src" in a)
    ]
    assert "url(" not in text and "@import" not in text
    assert "https://example.org/camlens" in text  # run_info shown as text
    # no test scaffolding in the product: the browser test drives a copy from outside
    assert "dataset.test" not in text and "self-test" not in text.lower()


def test_summary_and_curves(case):
    _, _, ev, _, path, page = case
    text = path.read_text()
    assert f"Test accuracy on {RUN_INFO['data_label']}" in text
    assert f"{ev.accuracy:.2%}" in text
    assert "/tmp/none.safetensors" in text
    assert any(a.get("class") == "curves" for t, a in page.tags if t == "img")


def test_gallery_has_every_mistake_with_its_maps(case):
    _, split, ev, _, _, page = case
    items = page.with_class("article", "item")
    assert len(items) == len(ev.mistakes) > 0
    got = Counter((int(a["data-label"]), int(a["data-pred"])) for a in items)
    want = Counter(zip(ev.mistakes.labels.tolist(), ev.mistakes.preds.tolist(), strict=True))
    assert got == want
    assert sorted(int(a["data-index"]) for a in items) == sorted(ev.mistakes.indices.tolist())
    # originals: 32 px PNG shown enlarged; gradcam has a contrast map, so three maps each
    origs = page.with_class("img", "orig")
    maps = page.with_class("img", "map")
    assert len(origs) == len(items) and len(maps) == 3 * len(items)
    first = Image.open(io.BytesIO(base64.b64decode(origs[0]["src"].split(",", 1)[1])))
    assert first.size == (32, 32)
    idx = int(items[0]["data-index"])
    assert torch.equal(torch.from_numpy(np.array(first)).permute(2, 0, 1), split.images[idx])
    overlay = Image.open(io.BytesIO(base64.b64decode(maps[0]["src"].split(",", 1)[1])))
    assert overlay.size == (64, 64) and overlay.format == "JPEG"
    # the other layer's maps are in the JSON block, one triple per item
    payload = json.loads(page.json)
    assert set(payload["variants"]) == {"gradcam|layer3", "gradcam|layer4"}
    assert payload["default"] == "gradcam|layer4"
    assert payload["variants"]["gradcam|layer4"]["maps"] is None  # those are in the <img> tags
    other = payload["variants"]["gradcam|layer3"]
    assert len(other["maps"]) == len(items) and all(len(t) == 3 for t in other["maps"])
    assert "8×8" in other["label"] and "4×4" in payload["variants"]["gradcam|layer4"]["label"]


def test_confusion_cells_and_counts(case):
    _, _, ev, _, _, page = case
    k = len(CLASSES)
    assert len(page.cells) == k * k
    for t, p, text in page.cells:
        assert int(text) == int(ev.confusion[t, p])
    clickable = page.with_class("td", "clickable")
    assert {(int(a["data-label"]), int(a["data-pred"])) for a in clickable} == {
        (t, p) for t in range(k) for p in range(k) if t != p and ev.confusion[t, p] > 0
    }


def test_pair_sections_for_frequent_pairs(case):
    _, _, ev, _, path, page = case
    counts = Counter(zip(ev.mistakes.labels.tolist(), ev.mistakes.preds.tolist(), strict=True))
    frequent = {pair for pair, n in counts.items() if n >= ReportConfig().min_pair}
    assert frequent, "the fixture should produce pairs with enough images"
    blocks = page.with_class("div", "pair")
    assert {(int(a["data-label"]), int(a["data-pred"])) for a in blocks} == frequent
    # one block of mean maps per (method, layer) in each pair; the definition is on the page
    assert len(page.with_class("div", "pv")) == 2 * len(frequent)
    assert "outside the centre box" in path.read_text()
    assert "16×16 of 32×32); a uniform map gives 75%" in path.read_text()


def test_the_centre_box_sentence_follows_the_sizes(case, tmp_path):
    model, split, ev, _, _, _ = case
    plan = ExplainPlan(layers=("layer4",))
    data = _report(model, split, ev, plan, limit=0, config=ReportConfig(centre=0.25, max_pairs=1))
    text = render_report(data, tmp_path).read_text()
    # the middle quarter of each side: 8x8 of 32x32, so 1 - 64/1024 of a uniform map is outside
    assert "8×8 of 32×32); a uniform map gives 94%" in text


def test_pair_statistics_follow_the_definition(case):
    model, split, ev, _, _, _ = case
    config = ReportConfig(correct_per_class=4)
    data = _report(model, split, ev, ExplainPlan(layers=("layer4",)), config=config)
    assert data.pairs and all(p.count >= config.min_pair for p in data.pairs)
    assert [p.count for p in data.pairs] == sorted((p.count for p in data.pairs), reverse=True)
    for pair in data.pairs:
        means, outside = pair.means["gradcam"], pair.outside["gradcam"]
        assert means.shape == (1, 3, 32, 32) and outside.shape == (1, 3)
        assert pair.correct <= 4
        assert float(means.max()) == pytest.approx(1.0)  # one shared scale per layer
        assert torch.allclose(outside[0], outside_centre_share(means[0]), equal_nan=True)


@pytest.mark.layout
@pytest.mark.parametrize("limit", [0, 7])
def test_pair_means_summed_in_chunks_equal_the_means_of_all_maps(case, limit):
    """The pairs' maps are summed chunk by chunk: the shown mistakes' maps (the gallery's),
    then the other pair images streamed in chunks of 3; the result must equal mean_maps of
    every pair image's map at once."""
    model, split, ev, _, _, _ = case
    config = ReportConfig(correct_per_class=4, min_pair=2)
    plan = ExplainPlan(layers=("layer4",), cam_batch_size=1, chunk_size=3)
    data = _report(model, split, ev, plan, limit=limit, config=config)
    m, labels = ev.mistakes, split.labels.long()
    shown = set(data.mistakes.indices.tolist())
    split_pairs = 0  # pairs whose images are part shown, part streamed
    for pair in data.pairs:
        rows = ((m.labels == pair.label_index) & (m.preds == pair.pred_index)).nonzero()
        split_pairs += len({int(m.indices[r]) in shown for r in rows.flatten()}) == 2
    assert split_pairs if limit else not shown
    with GradCAM(model, layer="layer4", normalize="none") as cam:
        for pair in data.pairs:
            t, p = pair.label_index, pair.pred_index
            rows = ((m.labels == t) & (m.preds == p)).nonzero().flatten()
            x = split.images[m.indices[rows]].float() / 255
            right = ((labels == t) & (ev.logits.argmax(1) == t)).nonzero().flatten()[:4]
            expected = mean_maps(
                [
                    cam.explain(x, targets=m.preds[rows]).maps,
                    cam.explain(x, targets=m.labels[rows]).maps,
                    cam.explain(split.images[right].float() / 255, targets=labels[right]).maps
                    if len(right)
                    else torch.zeros(0, 32, 32),
                ]
            )
            assert torch.allclose(pair.means["gradcam"][0], expected, atol=1e-5)


def test_the_pairs_images_are_read_a_slice_at_a_time(case):
    """The pairs' images not shown are read from the split a slice of 4 CAM batches at a time
    (at 224 px all at once was up to 12 pairs x 256 photos, 460 MB). Planted: every pair image
    read in one index (split.images[rest.indices]): red."""
    model, split, ev, _, _, _ = case
    reads = []

    class Spy:  # the split's images, recording how many rows each read asks for
        shape = split.images.shape

        def __len__(self):
            return len(split.images)

        def __getitem__(self, idx):
            out = split.images[idx]
            reads.append(out.shape[0] if out.ndim == 4 else 1)
            return out

    plan = ExplainPlan(layers=("layer4",), cam_batch_size=1)
    config = ReportConfig(correct_per_class=2, min_pair=2)
    data = _report(model, Split(Spy(), split.labels), ev, plan, limit=0, config=config)
    assert data.pairs and sum(reads) > 4 + 2 * len(data.pairs)  # more pair images than a slice
    assert max(reads) <= 4


def test_limit_keeps_the_most_confident(case, tmp_path):
    model, split, ev, _, _, _ = case
    data = _report(model, split, ev, limit=5)
    assert len(data.mistakes) == 5
    assert torch.equal(data.mistakes.indices, ev.mistakes.indices[:5])
    page = Page()
    text = render_report(data, tmp_path).read_text()
    page.feed(text)
    assert len(page.with_class("article", "item")) == 5
    assert "the 5 most confident of" in text


def test_pairs_only_when_no_mistake_is_shown(case, tmp_path):
    model, split, ev, _, _, _ = case
    data = _report(model, split, ev, limit=0)
    assert not len(data.mistakes) and not data.explanations and data.pairs
    page = Page()
    page.feed(render_report(data, tmp_path).read_text())
    assert not page.with_class("article", "item") and page.with_class("div", "pair")
    assert json.loads(page.json)["default"] == "gradcam|layer4"
    radios = [a["name"] for t, a in page.tags if t == "input" and a.get("type") == "radio"]
    assert sorted(radios) == ["layer", "layer", "method"]  # they still switch the pairs


def test_centre_box_is_the_middle_half():
    assert centre_box(32, 32) == (slice(8, 24), slice(8, 24))
    rows, cols = centre_box(8, 4)
    assert (rows, cols) == (slice(2, 6), slice(1, 3))


def test_outside_share_by_hand():
    corner = torch.zeros(32, 32)
    corner[:4, :4] = 1.0
    uniform = torch.ones(32, 32)
    centre = torch.zeros(32, 32)
    centre[8:24, 8:24] = 3.0
    half = torch.zeros(32, 32)
    half[0, 0], half[16, 16] = 1.0, 1.0  # equal mass outside and inside
    negative = uniform - 2 * (torch.arange(32)[:, None] < 8).float()  # top rows negative
    share = outside_centre_share(torch.stack([corner, uniform, centre, half, 7 * uniform]))
    assert share.tolist() == pytest.approx([1.0, 0.75, 0.0, 0.5, 0.75])
    # only the non-negative part counts: rows 8.. are 1, of them outside the box: 24x16 of 24x32
    assert float(outside_centre_share(negative[None])) == pytest.approx(1 - 256 / (24 * 32))
    assert math.isnan(float(outside_centre_share(torch.zeros(1, 32, 32))))


def test_mean_maps_share_one_scale():
    peaked = torch.zeros(3, 8, 8)
    peaked[0, 1, 1], peaked[1, 1, 1], peaked[2, 1, 1] = 1.0, 5.0, 0.1  # scale does not matter
    uniform = torch.full((2, 8, 8), 2.0)
    half = torch.zeros(2, 8, 8)
    half[:, 0, 0] = 1.0
    half[:, 7, 7] = 1.0
    out = mean_maps([peaked, uniform, half, torch.zeros(2, 8, 8)])
    assert out.shape == (4, 8, 8)
    # each group's mean is a distribution; the shared scale maps the largest value to 1
    assert float(out[0, 1, 1]) == pytest.approx(1.0) and float(out[0].sum()) == pytest.approx(1.0)
    assert torch.allclose(out[1], torch.full((8, 8), 1 / 64))
    assert float(out[2, 0, 0]) == pytest.approx(0.5) and float(out[2, 7, 7]) == pytest.approx(0.5)
    assert torch.equal(out[3], torch.zeros(8, 8))  # no mass anywhere: zeros, not NaN
    # maps with no mass are left out of the mean rather than diluting it
    with_empty = mean_maps([torch.cat([peaked, torch.zeros(4, 8, 8)]), uniform])
    assert torch.allclose(with_empty, mean_maps([peaked, uniform]))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="jpeg, png or webp"):
        ReportConfig(image_format="gif")
    with pytest.raises(ValueError, match="centre"):
        ReportConfig(centre=1.5)


def test_webp_and_png_overlays(case, tmp_path):
    model, split, ev, _, _, _ = case
    config = ReportConfig(image_format="webp", max_pairs=1)
    data = _report(model, split, ev, ExplainPlan(layers=("layer4",)), limit=3, config=config)
    text = render_report(data, tmp_path).read_text()
    assert re.search(r'class="map" data-k="0" src="data:image/webp;base64,', text)


SANITY = {  # each named state once, with the reasons compare writes
    "gradcam": ("passes", []),
    "eigencam": ("class-blind", ["still 1.00 alike with linear randomised (floor 1.00)"]),
    "constant": ("uninformative", ["90% of the maps are flat"]),
    "edges": ("model-blind", ["entropy moves +0.0% on a random model (eMPRT)"]),
}
TRUST = {
    "rows": [
        {
            "method": m,
            "layer": layer,
            "subset": "mistakes",
            "metric": "deletion",
            "mean": mean,
            "ci_low": mean - 0.01,
            "ci_high": mean + 0.01,
            "n": 4,
        }
        for m, layer, mean in (
            ("gradcam", "layer4", 0.123),
            ("eigencam", "layer4", 0.456),
            ("random", "layer4", 0.3),  # drawn at layer4's grid: still a baseline
            ("centre", "-", 0.35),
        )
    ],
    "higher_is_better": {"deletion": False},
    "beats_baselines": [["gradcam", "layer4", "mistakes", "deletion"]],
    "sanity": {
        method: {
            "layer": "layer4",
            "steps": ["linear", "layer4"],
            "spearman": [0.9, 0.1],
            "state": state,
            "reasons": reasons,
            "passed": state == "passes",
        }
        for method, (state, reasons) in SANITY.items()
    },
    "verdicts": VERDICTS,
    "headline": [
        "gradcam layer4 (mistakes) cannot be told apart from the centre map on "
        "deletion, insertion, road"
    ],
}


def test_trust_section_only_with_compare_results(case):
    model, split, ev, _, path, _ = case
    assert "Can these maps be trusted?" not in path.read_text()
    data = _report(model, split, ev, limit=0, trust=TRUST)
    html = render_html(data)
    page = Page()
    page.feed(html)
    assert "Can these maps be trusted?" in html and 'href="#trust"' in html
    assert [len(page.with_class("td", c)) for c in ("win", "lose", "base")] == [1, 1, 2]
    assert html.index("0.123") < html.index("0.456") < html.index("baseline: random layer4")
    assert 'class="win">0.123' in html and 'class="lose">0.456' in html


def test_trust_section_names_each_sanity_state_and_why(case):
    model, split, ev, _, _, _ = case
    html = render_html(_report(model, split, ev, limit=0, trust=TRUST))
    for method, (state, reasons) in SANITY.items():
        cls = "state-pass" if state == "passes" else "state-fail"
        why = reasons[0] if reasons else VERDICTS["passes"]
        row = f'<th>{method} layer4</th><td class="{cls}">{state}</td><td>{why}</td>'
        assert row in html, method
    for state, line in VERDICTS.items():  # what each state means
        assert f"<b>{state}</b>: {line}" in html
    assert "cannot be told apart from the centre map" in html


def test_mistakes_carry_the_counterfactual_verdict_and_pairs_its_sums(case, tmp_path):
    """With the gallery's counterfactual test: a verdict and data-cf* per item (sort, filter)
    and one line per confusion pair, as `confusion_summary` of the same test says."""
    from camlens.explain import mistake_counterfactual
    from camlens.metrics.counterfactual import confusion_summary

    model, split, ev, _, _, _ = case
    plan = ExplainPlan(layers=("layer3", "layer4"), counterfactual=True)
    data = _report(model, split, ev, plan=plan, limit=12)
    expl = data.explanations["gradcam"]
    cf = mistake_counterfactual(model, data.mistakes, expl, plan)
    data = replace(data, explanations={"gradcam": replace(expl, counterfactual=cf)})
    text = render_report(data, tmp_path).read_text()
    page = Page()
    page.feed(text)
    items = page.with_class("article", "item")
    assert len(items) == 12
    j = cf.fractions.index(cf.headline)
    for i, item in enumerate(items):
        assert float(item["data-cfdrop"]) == pytest.approx(float(cf.drop_map[i, j]), abs=1e-4)
        kinds = item["data-cf"].split()
        assert ("beat" in kinds) == bool(cf.beat_random[i, j])
        assert ("true" in kinds) == bool(cf.to_true_map[i, j])
        assert ("left" in kinds or "true" in kinds) == bool(cf.left_map[i, j])
    lines = re.findall(r'<div id="cf-pairs">.*?<ul>(.*?)</ul>', text, re.S)[0]
    shown = [html_lib.unescape(x) for x in re.findall(r"<li>(.*?)</li>", lines)]
    assert shown == confusion_summary(cf, list(CLASSES)) and len(shown) >= 2
    # the total over all mistakes shown: each mistake's own "became its true class", summed
    to_true = [int(cf.preds_map[i, j] == cf.labels[i]) for i in range(len(items))]
    to_true_random = [int(cf.preds_random[i, j] == cf.labels[i]) for i in range(len(items))]
    total = f"All 12 mistakes shown: the map turns {sum(to_true)} into their true class; "
    assert total + f"random regions turn {sum(to_true_random)}." in text
    for verdict in cf.verdicts(list(CLASSES)):
        assert html_lib.escape(verdict, quote=False) in text or html_lib.escape(verdict) in text
    assert 'value="cfdrop"' in text and 'id="cf"' in text  # sort by it, filter by it
    plain = render_report(_report(model, split, ev, limit=12), tmp_path / "plain").read_text()
    assert 'id="cf-pairs"' not in plain and 'id="cf"' not in plain


def test_trust_section_leads_with_the_grid_line_and_its_table(case):
    """The grid test's line is the first verdict of the section, its table beside it.
    Planted: the headline read without compare.json's "grid" (red)."""
    from camlens.compare.grid import grid_test
    from camlens.metrics import GridConfig
    from test_grid import Colours, _maps_of, colour_data

    colours = Colours()
    images, labels = colour_data(per_class=12)
    pairs = [("gradcam", "relu"), ("wrong tile", "relu")]
    grid = grid_test(
        colours,
        Split(images, labels),
        colours(images),
        pairs,
        _maps_of(colours),
        GridConfig(count=12, min_grids=4),
    )
    model, split, ev, _, _, _ = case
    html = render_html(_report(model, split, ev, limit=0, trust={**TRUST, "grid": grid}))
    first = html.index('<ul class="headline"><li>') + len('<ul class="headline"><li>')
    assert html[first:].startswith("grid test (2x2 confident correct images")
    assert "believe gradcam relu" in html and "worse than chance: wrong tile relu" in html
    assert "<th>baseline: oracle</th>" in html and "<th>wrong tile relu</th>" in html


def test_the_page_is_written_as_it_is_made(case, tmp_path, monkeypatch):
    """report.html is streamed to disk a chunk of cards at a time: the Python memory it takes at
    its peak is well under the page's size. Planted: render_report writing render_html(data)
    (the page whole in memory, as before): red."""
    import tracemalloc

    import camlens.report.cards as cards

    model, split, ev, _, _, _ = case
    data = _report(
        model, split, ev, ExplainPlan(layers=("layer4",)), config=ReportConfig(workers=1)
    )
    many = 8  # the mistakes repeated: a page of 8x the cards, written 4 cards at a time
    m = data.mistakes
    m = replace(m.select(torch.arange(len(m)).repeat(many)))
    expl = data.explanations["gradcam"].select(torch.arange(len(data.mistakes)).repeat(many))
    data = replace(data, mistakes=m, explanations={"gradcam": expl}, pairs=[])
    monkeypatch.setattr(cards, "CHUNK", 4)
    render_report(data, tmp_path)  # warm: imports, fonts, the template
    tracemalloc.start()
    try:
        path = render_report(data, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    assert size > 1_000_000 and peak < size / 3, (peak, size)
