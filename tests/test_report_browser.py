"""The report in a real browser: headless Chromium (Debian's `chromium` package), no extra deps.

The product page carries no test code. The test writes a copy of the report with a driver
script appended: on load it performs each step through the real DOM (element.click()
dispatches a click event to the page's own handlers; the search box gets an input event) and
writes what is visible after each step into data-test-* attributes of <html>, which
`chromium --dump-dom` prints.
"""

import html
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from camlens.data import Split
from camlens.evaluate import evaluate
from camlens.explain import ExplainPlan, mistake_maps, select_mistakes
from camlens.model import ResNet18
from camlens.report import RunFacts, compute_report, render_report

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not HAVE_CHROMIUM,
        reason="needs headless Chromium: apt-get install -y chromium (CI's .ci/run installs it)",
    ),
]

CLASSES = ("cat", "dog", "frog", "ship", "truck")


# headless Chromium as the browser tests run it (test_view_browser.py reads these too)
FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium refuses its sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers have a tiny /dev/shm
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [*FLAGS, f"--user-data-dir={profile}"]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180, check=False
    )


DRIVER = """<script>
window.addEventListener("load", () => {
  const steps = STEPS;
  const items = Array.from(document.querySelectorAll("#grid .item"));
  const counts = [], pairs = [], srcs = [], loaded = [];
  const record = () => {
    const shown = items.filter((it) => it.getClientRects().length > 0);
    counts.push(shown.length);
    pairs.push([...new Set(shown.map((it) => `${it.dataset.label},${it.dataset.pred}`))]
      .sort().join(" "));
    const img = shown.length ? shown[0].querySelector("img.map") : null;
    srcs.push(img ? `${img.src.length}:${img.src.slice(-12)}` : "");
    loaded.push(shown.filter((it) => Array.from(it.querySelectorAll("figure:not([hidden]) img"))
      .every((im) => im.complete && im.naturalWidth > 0)).length);
  };
  record();
  for (const [verb, arg] of steps) {
    if (verb === "cell") {
      const [t, p] = arg.split(",");
      document.querySelector(`td.cell[data-label="${t}"][data-pred="${p}"]`).click();
    } else if (verb === "search") {
      const search = document.getElementById("search");
      search.value = arg;
      search.dispatchEvent(new Event("input", { bubbles: true }));
    } else if (verb === "all") {
      document.getElementById("show-all").click();
    } else if (verb === "method" || verb === "layer") {
      document.querySelector(`input[name="${verb}"][value="${arg}"]`).click();
    }
    record();
  }
  const root = document.documentElement;
  root.dataset.testCounts = counts.join(",");
  root.dataset.testPairs = pairs.join("|");
  root.dataset.testSrcs = srcs.join("|");
  root.dataset.testLoaded = loaded.join(",");
});
</script>"""


def driven(report: Path, steps: list[tuple[str, str]], folder: Path) -> Path:
    """A copy of `report` that performs `steps` once loaded; the original stays untouched."""
    page, end = report.read_text().rsplit("</body>", 1)
    copy = folder / "driven.html"
    copy.write_text(page + DRIVER.replace("STEPS", json.dumps(steps)) + "</body>" + end)
    return copy


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    torch.manual_seed(0)
    model = ResNet18(len(CLASSES), width=8).eval()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(40) % len(CLASSES)
    split = Split(images, labels)
    out = tmp_path_factory.mktemp("report")
    plan, ev = ExplainPlan(layers=("layer3", "layer4")), evaluate(model, split)
    shown = select_mistakes(ev.mistakes, CLASSES)  # every mistake, most confident first
    shown = replace(shown, images=split.images[shown.indices])
    maps = {"gradcam": mistake_maps(model, shown.images, shown.labels, plan, preds=shown.preds)}
    info = {"data_label": "random images"}
    data = compute_report(
        model, split, CLASSES, plan, explained=(shown, maps), evaluation=ev, facts=RunFacts(info)
    )
    return render_report(data, out), ev, tmp_path_factory.mktemp("chromium-profile")


def test_gallery_renders_and_confusion_click_filters(report, tmp_path):
    path, ev, profile = report
    pairs = Counter(zip(ev.mistakes.labels.tolist(), ev.mistakes.preds.tolist(), strict=True))
    (t, p), n_pair = pairs.most_common(1)[0]
    m = len(ev.mistakes)
    name = CLASSES[t]
    n_name = sum(1 for a, b in pairs.elements() if name in (CLASSES[a], CLASSES[b]))
    cell = ("cell", f"{t},{p}")
    steps = [cell, cell, cell, ("all", ""), ("search", name), ("all", ""), ("layer", "layer3")]
    run = chromium(profile, "--dump-dom", driven(path, steps, tmp_path).as_uri())
    root = re.search(r"<html[^>]*>", run.stdout)
    assert root, f"no DOM from chromium (rc {run.returncode}): {run.stderr[-2000:]}"
    attrs = dict(re.findall(r'(data-test-[\w-]+)="([^"]*)"', root.group(0)))
    assert "data-test-counts" in attrs, f"the driver did not run: {root.group(0)[:300]}"
    counts = [int(c) for c in attrs["data-test-counts"].split(",")]
    # every mistake rendered; a cell click shows only its pair; clicking again clears
    assert counts == [m, n_pair, m, n_pair, m, n_name, m, m]
    shown_pairs = attrs["data-test-pairs"].split("|")
    assert shown_pairs[1] == f"{t},{p}" and shown_pairs[3] == f"{t},{p}"
    assert len(shown_pairs[0].split()) == len(pairs)
    # all images of the rendered items were decoded before the clicks
    assert int(attrs["data-test-loaded"].split(",")[0]) == m
    # switching the layer swaps the map sources
    srcs = attrs["data-test-srcs"].split("|")
    assert srcs[-1] != srcs[-2] and srcs[-2]


def test_screenshot(report, tmp_path):
    path, ev, profile = report
    shot = tmp_path / "report.png"
    t, p = int(ev.mistakes.labels[0]), int(ev.mistakes.preds[0])
    run = chromium(
        profile,
        f"--screenshot={shot}",
        "--window-size=1280,2400",
        driven(path, [("cell", f"{t},{p}")], tmp_path).as_uri(),
    )
    assert shot.is_file() and shot.stat().st_size > 20_000, run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


DIFF_DRIVER = """<script>
const errors = [];
window.addEventListener("error", (e) => errors.push(String(e.message)));
window.addEventListener("load", () => {
  const imgs = Array.from(document.querySelectorAll("img"));
  const root = document.documentElement;
  root.dataset.testImages = imgs.length;
  root.dataset.testDecoded = imgs.filter((im) => im.complete && im.naturalWidth > 0).length;
  root.dataset.testItems = document.querySelectorAll(".item").length;
  root.dataset.testErrors = errors.join("|");
});
</script>"""


def test_diff_page_renders_every_picture_without_script_errors(tmp_path):
    from camlens.diff import diff_models, write_diff

    torch.manual_seed(0)
    models = [ResNet18(len(CLASSES), norm, width=8).eval() for norm in ("batch", "layer")]
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
    split = Split(images, torch.arange(30) % len(CLASSES))
    d = diff_models(*models, split, CLASSES, names=("BN", "LN"), cards=4)
    page, end = write_diff(d, tmp_path / "diff")["diff.html"].read_text().rsplit("</body>", 1)
    copy = tmp_path / "driven.html"
    copy.write_text(page + DIFF_DRIVER + "</body>" + end)
    run = chromium(tmp_path / "profile", "--dump-dom", copy.as_uri())
    root = re.search(r"<html[^>]*>", run.stdout)
    assert root, f"no DOM from chromium (rc {run.returncode}): {run.stderr[-2000:]}"
    attrs = dict(re.findall(r'(data-test-[\w-]+)="([^"]*)"', root.group(0)))
    assert "data-test-images" in attrs, f"the driver did not run: {root.group(0)[:300]}"
    assert attrs["data-test-errors"] == ""
    items = sum(min(4, d.groups[g].numel()) for g in d.groups)
    assert int(attrs["data-test-items"]) == items > 0
    # three pictures per card, plus the agreement figure when there are shared mistakes
    assert int(attrs["data-test-images"]) >= 3 * items
    assert attrs["data-test-decoded"] == attrs["data-test-images"]


PAIR_DRIVER = """<script>
window.addEventListener("load", () => {
  const started = performance.now();
  const [t, p] = PAIR;
  const visible = () => Array.from(document.querySelectorAll("#grid .item"))
    .filter((it) => it.getClientRects().length > 0);
  const before = visible().length;
  document.querySelector(`tr.top-pair[data-label="${t}"][data-pred="${p}"] a.pair-link`).click();
  const after = visible();
  const row = document.querySelector(`tr.top-pair[data-label="${t}"][data-pred="${p}"]`);
  const heads = document.querySelectorAll("#class-table th[data-sort]");
  const firstClass = () => document.querySelector("#class-table tbody tr th").dataset.v;
  heads[1].click();  // sort the classes by accuracy, lowest first
  heads[1].click();  // and again: highest first
  const first = firstClass();
  const root = document.documentElement;
  root.dataset.testBefore = before;
  root.dataset.testAfter = after.map((it) => `${it.dataset.label},${it.dataset.pred}`).join(" ");
  root.dataset.testSelected = row.classList.contains("selected");
  root.dataset.testDecoded = after.every((it) => Array.from(it.querySelectorAll(
    "figure:not([hidden]) img")).every((im) => im.complete && im.naturalWidth > 0));
  root.dataset.testFirst = first;
  root.dataset.testMs = Math.round(performance.now() - started);
});
</script>"""


def test_a_1000_class_report_opens_and_a_confused_pair_shows_its_cards(tmp_path):
    """The page of a 1,000-class model (no K x K table): clicking a pair among the most
    confused shows exactly its cards, decoded, and the class table sorts by accuracy."""
    from camlens import from_user_data
    from camlens.pipeline import report
    from test_report_kscale import BRIGHT, PREDICTED, TinyNet, tiny_data

    images, labels, classes = tiny_data()
    data = from_user_data((images.float() / 255, labels), classes=classes)
    plan = ExplainPlan(layers=("features",), limit=2 * BRIGHT)
    path = report(TinyNet().eval(), data, tmp_path / "out", plan).report
    page, end = path.read_text().rsplit("</body>", 1)
    pair = (3, PREDICTED)
    copy = tmp_path / "driven.html"
    copy.write_text(page + PAIR_DRIVER.replace("PAIR", json.dumps(pair)) + "</body>" + end)
    run = chromium(tmp_path / "profile", "--dump-dom", copy.as_uri())
    root = re.search(r"<html[^>]*>", run.stdout)
    assert root, f"no DOM from chromium (rc {run.returncode}): {run.stderr[-2000:]}"
    attrs = dict(re.findall(r'(data-test-[\w-]+)="([^"]*)"', root.group(0)))
    assert "data-test-before" in attrs, f"the driver did not run: {root.group(0)[:300]}"
    assert int(attrs["data-test-before"]) == 2 * BRIGHT
    assert attrs["data-test-after"] == f"3,{PREDICTED} 3,{PREDICTED}"  # its 2 cards, no other
    assert attrs["data-test-selected"] == "true" and attrs["data-test-decoded"] == "true"
    # sorted by accuracy, highest first: the one class the model gets right
    assert html.unescape(attrs["data-test-first"]) == classes[PREDICTED]
