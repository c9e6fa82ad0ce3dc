"""The report at ImageNet's K = 1,000 classes, on tiny data: 2 images of 32 px per class.

What broke at that size: a confusion figure of 68,310 x 60,588 px, a K x K HTML table of a
million cells, all K probability bars on every card, a csv column per class, and loops over rows
inside loops over rows. Each test here fails on one of them (planted, watched red, reverted).
Per-row loops are caught by counting torch calls, not by timing: a loop that indexes a tensor
per row makes calls that grow with the rows; a vectorised one makes the same few calls at any
size.
"""

import csv
import re
from dataclasses import replace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.overrides import TorchFunctionMode

from camlens import from_user_data
from camlens.data import Split
from camlens.evaluate import Mistakes, evaluate, read_mistakes
from camlens.explain import ExplainPlan, Explanations, mistake_maps
from camlens.gallery import GalleryConfig
from camlens.gallery.draw import CardLayout, draw_card, draw_panels
from camlens.gallery.folder import card_names, write_index
from camlens.metrics.counterfactual import Counterfactual, confusion_summary
from camlens.pipeline import report
from camlens.report import ReportConfig, compute_report
from camlens.report.cards import gallery_parts
from camlens.report.compute import _top_pairs

K = 1000
PREDICTED = K - 1  # the class the tiny model takes nearly everything for
BRIGHT = 8  # classes whose images are bright: the model's most confident mistakes


class TinyNet(nn.Module):
    """A 1,000-class CNN whose mistakes have a known shape: it predicts PREDICTED, the more
    confidently the brighter the image, so the first BRIGHT classes' images lead the gallery
    and the pairs (t, PREDICTED) are the most confused, each with 2 images."""

    def __init__(self, k: int = K) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, k)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.features[0].weight.copy_(0.05 + 0.1 * torch.rand(4, 3, 3, 3, generator=g))
            self.features[0].bias.zero_()
            self.fc.weight.copy_(0.2 * torch.randn(k, 4, generator=g))
            self.fc.bias.zero_()
            self.fc.weight[k - 1] = 6.0  # brightness -> the last class

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def tiny_data(k: int = K, per_class: int = 2, size: int = 32):
    """(images, labels, classes): uint8 noise, the first BRIGHT classes bright, the rest dark."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(k).repeat_interleave(per_class)
    images = torch.randint(0, 60, (len(labels), 3, size, size), generator=g, dtype=torch.uint8)
    bright = labels < BRIGHT
    images[bright] = torch.randint(
        200, 256, (int(bright.sum()), 3, size, size), generator=g, dtype=torch.uint8
    )
    # names of ImageNet's length, with a character to escape
    classes = tuple(f"class {i:04d} & kin" for i in range(k))
    return images, labels, classes


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    images, labels, classes = tiny_data()
    data = from_user_data((images.float() / 255, labels), classes=classes)
    out = tmp_path_factory.mktemp("k1000")
    plan = ExplainPlan(layers=("features",), limit=16)
    outcome = report(TinyNet().eval(), data, out, plan)
    return out, outcome, classes


def test_a_1000_class_report_is_small_and_lists_pairs_not_cells(written):
    """Planted: the K x K table at any K (classes_section always `_confusion`): red."""
    out, outcome, classes = written
    m = outcome.evaluation.mistakes
    assert len(m) > 1900  # nearly everything is taken for PREDICTED
    text = (out / "report.html").read_text()
    assert len(text) < 1_500_000  # 16 cards; a K x K table alone is ~200 MB
    assert 'class="cell' not in text and 'class="confusion"' not in text
    # a sortable row per class, and the 50 most confused pairs, the shown ones linked
    assert len(re.findall(r"<tr><th data-v=", text)) == K
    pairs = re.findall(
        r'<tr class="top-pair" data-label="(\d+)" data-pred="(\d+)">(.*?)</tr>', text
    )
    assert len(pairs) == ReportConfig().top_pairs
    linked = [(int(t), int(p)) for t, p, row in pairs if "pair-link" in row]
    assert linked == [(t, PREDICTED) for t in range(BRIGHT)]
    assert "class 0000 &amp; kin → class 0999 &amp; kin" in text
    # 16 cards, each with the top 5 and, when outside them, the truth
    cards = re.findall(r'<article class="item".*?</article>', text, re.S)
    assert len(cards) == 16
    for card in cards:
        bars = re.findall(r'<div class="pr( is-\w+)?">', card)
        assert 5 <= len(bars) <= 6 and " is-label" in bars
    assert f"the 16 most confident of {len(m):,}; the cap is 16" in text


def test_the_confusion_figure_and_csv_stay_small_at_1000_classes(written):
    """Planted: cell numbers at any K (the figure asks for a 68,310 px canvas: killed)."""
    out, outcome, classes = written
    png = Image.open(out / "eval" / "confusion.png")
    assert png.width < 2500 and png.height < 1200
    rows = list(csv.reader((out / "eval" / "misclassified.csv").read_text().splitlines()))
    assert rows[0][5:] == [f"{kind}{r}" for r in range(1, 6) for kind in ("top", "p_top")]
    m = outcome.evaluation.mistakes
    assert len(rows) == len(m) + 1 and rows[1][5] == classes[PREDICTED]
    probs = load_file(out / "eval" / "misclassified.safetensors")["probs"]
    assert probs.shape == (len(m), K) and torch.equal(probs, m.probs)
    back = read_mistakes(out / "eval" / "misclassified.csv")
    # read back as log-probabilities: the softmax of log p is p to float rounding
    torch.testing.assert_close(back.probs, m.probs, rtol=1e-5, atol=1e-7)
    assert torch.equal(back.preds, m.preds)


def test_a_card_draws_the_top_five_and_the_truth(monkeypatch):
    """Planted: a bar per class (`bar_classes` returning all K): 1,000 percentages, red."""
    import camlens.gallery.draw as draw

    images, labels, classes = tiny_data(per_class=1)
    model = TinyNet().eval()
    ev = evaluate(model, Split(images, labels))
    m = ev.mistakes.select(torch.arange(3))
    m = replace(m, images=images[m.indices])
    expl = mistake_maps(model, m.images, m.labels, ExplainPlan(layers=("features",)), preds=m.preds)
    config = GalleryConfig(size=32)
    layout = CardLayout.of(expl, classes, config)
    panels = draw_panels(expl, m.images, config)
    said = []
    real = draw.put_text
    monkeypatch.setattr(
        draw,
        "put_text",
        lambda canvas, xy, text, *a, **k: said.append(text) or real(canvas, xy, text, *a, **k),
    )
    card = draw_card(0, m, expl, panels, classes, layout)
    percentages = [t for t in said if re.fullmatch(r"\d+%", t)]
    assert len(percentages) == 6  # 5 likeliest + the truth, which is not among them
    assert classes[int(m.labels[0])][:11] in said
    assert card.shape[0] < 400


class Calls(TorchFunctionMode):
    """Counts torch calls (functions and tensor methods) made inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def calls(fn) -> int:
    with Calls() as c:
        fn()
    return c.n


def fake_mistakes(n: int, k: int = 20) -> tuple[Mistakes, Explanations]:
    g = torch.Generator().manual_seed(n)
    probs = torch.rand(n, k, generator=g).softmax(1)
    labels = torch.randint(0, k, (n,), generator=g)
    preds = (labels + 1) % k
    m = Mistakes.of_probs(torch.arange(n), labels, preds, probs, torch.rand(n, generator=g))
    m = replace(m, images=torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g))
    low = (torch.rand(n, 2, 2, generator=g),)
    cf = Counterfactual(
        fractions=(0.05, 0.1),
        headline=0.1,
        preds=preds,
        labels=labels,
        margin=torch.rand(n, generator=g),
        margin_map=torch.rand(n, 2, generator=g),
        margin_random=torch.rand(n, 2, generator=g),
        preds_map=torch.randint(0, k, (n, 2), generator=g),
        preds_random=torch.randint(0, k, (n, 2), generator=g),
    )
    expl = Explanations(
        method="gradcam",
        layers=("l",),
        resolutions=((2, 2),),
        size=(8, 8),
        pred_low=low,
        label_low=low,
        contrast_low=None,
        pred_max=torch.rand(1, n, generator=g),
        label_max=torch.rand(1, n, generator=g),
        logits=torch.rand(n, k, generator=g),
        counterfactual=cf,
    )
    return m, expl


@pytest.mark.parametrize(
    "step",
    ["counterfactual rows", "verdicts", "confusion_summary", "index.csv", "report cards"],
)
def test_no_torch_call_per_row(step, tmp_path):
    """Each step makes about as many torch calls for 48 rows as for 12: none per row. Planted: the
    counterfactual's properties read per row in `rows` (and `confusion_summary` masking per
    pair, `write_index` indexing per row, the report reading `probs[n, shown]`): red."""
    classes = [f"c{i}" for i in range(20)]

    def run(n: int) -> int:
        m, expl = fake_mistakes(n)
        cf = expl.counterfactual
        fn = {
            "counterfactual rows": cf.rows,
            "verdicts": lambda: cf.verdicts(classes),
            "confusion_summary": lambda: confusion_summary(cf, classes),
            "index.csv": lambda: write_index(
                tmp_path, expl, m, classes, card_names(m, classes), GalleryConfig()
            ),
            "report cards": lambda: list(gallery_parts(_report_data(m, expl, classes), {})),
        }[step]
        return calls(fn)

    # a call per row adds 36; a branch that depends on the data may add one or two
    assert run(48) - run(12) < 12


def _report_data(m: Mistakes, expl: Explanations, classes):
    from camlens.evaluate import Evaluation
    from camlens.report import ReportData

    k = len(classes)
    ev = Evaluation(0.0, 0.0, [0.0] * k, torch.zeros(k, k, dtype=torch.long), expl.logits, m)
    return ReportData(
        classes=tuple(classes),
        run_info={},
        history=None,
        evaluation=ev,
        mistakes=m,
        explanations={"gradcam": expl},
        pairs=[],
        layers=("l",),
        model_info={"model": "x", "parameters": 0},
        config=ReportConfig(workers=1),
        seconds=0.0,
    )


def test_top_pairs_cost_does_not_grow_with_k():
    """One bincount, not a mask per cell: the same calls at K = 40 as at K = 160. Planted: the
    walk over K^2 cells with two masks each (red)."""

    def run(k: int) -> int:
        g = torch.Generator().manual_seed(k)
        labels = torch.randint(0, k, (200,), generator=g)
        preds = (labels + torch.randint(1, 3, (200,), generator=g)) % k
        m = Mistakes.of_probs(torch.arange(200), labels, preds, torch.rand(200, k), torch.rand(200))
        conf = torch.zeros(k, k, dtype=torch.long).index_put_(
            (labels, preds), torch.tensor(1), accumulate=True
        )
        return calls(lambda: _top_pairs(conf, m, ReportConfig(min_pair=2)))

    assert run(160) == run(40)


def test_top_pairs_by_count_then_position():
    k = 6
    labels = torch.tensor([0, 0, 0, 2, 2, 2, 2, 5, 5, 5, 1])
    preds = torch.tensor([1, 1, 1, 3, 3, 3, 3, 0, 0, 0, 0])
    m = Mistakes.of_probs(torch.arange(11), labels, preds, torch.rand(11, k), torch.rand(11))
    conf = torch.zeros(k, k, dtype=torch.long)
    got = _top_pairs(conf, m, ReportConfig(min_pair=2, max_pairs=2))
    assert got == [(2, 3, 4), (0, 1, 3)]
    assert _top_pairs(conf, m, ReportConfig(min_pair=3))[2] == (5, 0, 3)


def test_pair_means_use_at_most_pair_images():
    """The pair statistics read each pair's first `pair_images` mistakes: stated on the page."""
    images, labels, classes = tiny_data()
    model = TinyNet().eval()
    split = Split(images, labels)
    ev = evaluate(model, split)
    plan = ExplainPlan(layers=("features",))
    shown = ev.mistakes.select(torch.arange(4))
    shown = replace(shown, images=split.images[shown.indices])
    maps = {"gradcam": mistake_maps(model, shown.images, shown.labels, plan, preds=shown.preds)}
    config = ReportConfig(min_pair=2, max_pairs=3, pair_images=1, correct_per_class=2)
    rd = compute_report(
        model,
        split,
        classes,
        plan,
        explained=(shown, maps),
        evaluation=ev,
        config=config,
    )
    assert [(p.label_index, p.pred_index, p.count, p.used) for p in rd.pairs] == [
        (t, PREDICTED, 2, 1) for t in range(3)
    ]
    from camlens.report import render_html

    text = render_html(rd)
    assert "1 mistakes of 2" in text and "over its 1 most confident mistakes at most" in text
