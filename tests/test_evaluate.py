import csv
import sys

import pytest
import torch
from safetensors.torch import load_file

from camlens.data import DataError, Split
from camlens.evaluate import (
    confusion_matrix,
    evaluate,
    fast_bf16,
    find_mistakes,
    predict,
    read_mistakes,
    resolve_precision,
    write_evaluation,
)
from camlens.model import ResNet18

CLASSES = ("a", "b", "c")


def test_confusion_matrix_counts_pairs():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 0, 2, 2])
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(labels.tolist(), preds.tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(confusion_matrix(labels, preds, 3), expected)


def test_find_mistakes_lists_every_wrong_image_most_confident_first():
    logits = torch.tensor([[3.0, 0, 0], [0, 5.0, 0], [0, 0, 1.0], [9.0, 0, 0], [0, 2.0, 1.0]])
    labels = torch.tensor([0, 0, 2, 1, 2])
    m = find_mistakes(logits, labels)
    assert m.indices.tolist() == [3, 1, 4]
    assert m.preds.tolist() == [0, 1, 1] and m.labels.tolist() == [1, 0, 2]
    assert torch.allclose(m.probs.sum(1), torch.ones(3))
    assert torch.allclose(m.margins, torch.tensor([9.0, 5.0, 1.0]))
    assert m.confidence[0] > m.confidence[1] > m.confidence[2]


@pytest.mark.layout
def test_mistakes_share_the_logits_and_hold_no_probabilities():
    """At 50,000 x 1,000 a probabilities copy is another 200 MB (docs/performance.md): the
    mistakes read theirs from the evaluation's own logits, shared by every selection.
    Planted: find_mistakes holding softmax(logits[wrong]) as its scores (red)."""
    g = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(40, 7, generator=g), torch.randint(0, 7, (40,), generator=g)
    m = find_mistakes(logits, labels)
    chosen = m.select(torch.tensor([2, 0])).select(slice(1, 2))
    for held in (m, chosen):
        assert held.scores.data_ptr() == logits.data_ptr()  # the same storage, no copy
    wrong = (logits.argmax(1) != labels).nonzero().flatten()
    assert torch.equal(torch.sort(m.indices).values, wrong)
    torch.testing.assert_close(chosen.probs, logits[m.indices[[0]]].softmax(1))
    torch.testing.assert_close(m.confidence, m.probs.max(1).values)


def test_predict_does_not_depend_on_batch_size_and_restores_mode():
    model = ResNet18(3, width=8).train()
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    a = predict(model, images, batch_size=3)
    b = predict(model, images, batch_size=64)
    assert a.shape == (10, 3) and torch.allclose(a, b, atol=1e-5)
    assert model.training
    flipped = predict(model, images.flip(3), batch_size=64)
    tta = predict(model, images, batch_size=4, tta=True)
    assert torch.allclose(tta, (b + flipped) / 2, atol=1e-5)


def _evaluation(tmp_path):
    torch.manual_seed(0)
    model = ResNet18(3, width=8).eval()
    split = Split(torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8), torch.arange(12) % 3)
    ev = evaluate(model, split, batch_size=5)
    return ev, split


def test_evaluate_and_the_written_files_agree(tmp_path):
    ev, split = _evaluation(tmp_path)
    preds = ev.logits.argmax(1)
    assert ev.accuracy == pytest.approx((preds == split.labels).float().mean().item())
    assert ev.confusion.sum() == 12 and len(ev.mistakes) == int((preds != split.labels).sum())
    write_evaluation(ev, CLASSES, tmp_path, {"checkpoint": "x"})
    for name in ("metrics.json", "confusion.csv", "confusion.png", "misclassified.csv"):
        assert (tmp_path / name).stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "misclassified.csv").read_text().splitlines()))
    assert len(rows) == len(ev.mistakes)
    assert {int(r["index"]) for r in rows} == set(
        (preds != split.labels).nonzero().flatten().tolist()
    )
    probs = load_file(tmp_path / "misclassified.safetensors")["probs"]  # the full (M, K)
    assert probs.shape == (len(rows), len(CLASSES))
    assert torch.allclose(probs.sum(1), torch.ones(len(rows)), atol=1e-5)
    for r, p in zip(rows, probs, strict=True):
        assert r["label"] != r["pred"]
        # the likeliest classes (here all 3 < 5) by name, likeliest first
        order = p.argsort(descending=True).tolist()
        assert [r[f"top{j + 1}"] for j in range(3)] == [CLASSES[k] for k in order]
        assert float(r["p_top1"]) == pytest.approx(float(p.max()), abs=1e-6)
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_misclassified_csv_reads_back_with_images(tmp_path):
    ev, split = _evaluation(tmp_path)
    write_evaluation(ev, CLASSES, tmp_path, {})
    back = read_mistakes(tmp_path / "misclassified.csv", split)
    assert torch.equal(back.indices, ev.mistakes.indices)
    assert torch.equal(back.preds, ev.mistakes.preds)
    assert torch.allclose(back.probs, ev.mistakes.probs, atol=1e-6)
    assert torch.equal(back.images, split.images[ev.mistakes.indices])
    other = Split(split.images, (split.labels + 1) % 3)
    assert len(back) > 0
    with pytest.raises(DataError, match="does not belong"):
        read_mistakes(tmp_path / "misclassified.csv", other)


@pytest.mark.parametrize(
    ("flags", "fast"),
    [("fpu avx512f avx512_bf16 amx_bf16 amx_tile", True), ("fpu avx512f avx512_bf16", False)],
)
def test_auto_precision_is_bf16_only_on_cpus_with_amx(tmp_path, monkeypatch, flags, fast):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\nbugs\t\t: amx_bf16_bug\n")
    cpu = torch.device("cpu")
    assert fast_bf16(cpu, str(info)) is fast
    assert fast_bf16(cpu, str(tmp_path / "missing")) is False  # not Linux: fp32
    module = sys.modules[resolve_precision.__module__]  # camlens.evaluate is also a function
    monkeypatch.setattr(module, "fast_bf16", lambda device: fast)
    assert resolve_precision("auto", cpu) == ("bf16" if fast else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"


def test_bar_classes_are_the_likeliest_five_and_the_truth_of_each_selected_row():
    """Known answer at K = 40 (beyond ALL_BARS_UP_TO): each row's five highest logits plus its
    true class, in class order, read through a selection that shares the logits."""
    k = 40
    logits = torch.zeros(3, k)
    logits[0, [7, 3, 30, 12, 25]] = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0])  # label 1: not shown
    logits[1, [2, 4, 6, 8, 10, 11]] = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])  # label 11
    logits[2, [0, 39, 38, 37, 36]] = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0])  # label 0: predicted
    labels = torch.tensor([1, 11, 5])
    mistakes = find_mistakes(logits, labels)
    by_index = dict(zip(mistakes.indices.tolist(), mistakes.bar_classes(), strict=True))
    assert by_index == {
        0: [1, 3, 7, 12, 25, 30],
        1: [2, 4, 6, 8, 10, 11],
        2: [0, 5, 36, 37, 38, 39],
    }
    picked = mistakes.select(mistakes.indices == 1)  # the rows of the shared logits follow
    assert picked.bar_classes() == [[2, 4, 6, 8, 10, 11]]
