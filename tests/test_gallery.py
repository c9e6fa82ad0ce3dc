import csv
import json

import pytest
import torch
from PIL import Image

from camlens.cam import GradCAM
from camlens.evaluate import find_mistakes, predict
from camlens.gallery import GalleryConfig, explain_mistakes, select_mistakes, write_gallery
from camlens.model import ResNet18

CLASSES = tuple(f"k{i}" for i in range(5))


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = ResNet18(5, width=8).eval()
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(30) % 5
    mistakes = find_mistakes(predict(model, images), labels)
    mistakes = type(mistakes)(
        *[getattr(mistakes, f) for f in ("indices", "labels", "preds", "probs", "margins")],
        images=images[mistakes.indices],
    )
    assert len(mistakes) >= 10
    return model, mistakes


def test_select_filters_sorts_and_limits(case):
    _, m = case
    some_true = CLASSES[int(m.labels[0])]
    chosen = select_mistakes(m, CLASSES, true=some_true)
    assert len(chosen) == int((m.labels == int(m.labels[0])).sum())
    assert all(CLASSES[t] == some_true for t in chosen.labels.tolist())
    by_margin = select_mistakes(m, CLASSES, sort="margin", limit=4)
    assert len(by_margin) == 4
    assert torch.all(by_margin.margins[:-1] >= by_margin.margins[1:])
    assert by_margin.margins[0] == m.margins.max()
    with pytest.raises(ValueError, match="k0, k1"):
        select_mistakes(m, CLASSES, pred="zebra")


def test_explanations_equal_the_engine_on_each_image(case):
    model, m = case
    expl = explain_mistakes(model, m.images, m.labels, layers=["layer3", "layer4"], batch_size=7)
    assert expl.pred.shape == (2, len(m), 32, 32) and expl.resolutions == ((8, 8), (4, 4))
    assert torch.equal(expl.logits.argmax(1), m.preds)
    with GradCAM(model, layer="layer4", normalize="none") as cam:
        raw_true = cam.explain(m.images.float() / 255, targets=m.labels)
    assert torch.allclose(expl.true_max[1], raw_true.raw_max[0], rtol=1e-4, atol=1e-6)
    # "pair" scale: an image's stronger map reaches 1, the weaker one stays below
    peak = torch.maximum(expl.pred[1].amax((1, 2)), expl.true[1].amax((1, 2)))
    assert torch.allclose(peak[peak > 0], torch.ones_like(peak[peak > 0]), atol=1e-5)
    assert expl.contrast is not None and expl.contrast.min() < 0


def test_gallery_files_and_index(tmp_path, case):
    model, m = case
    expl = explain_mistakes(model, m.images, m.labels, layers=["layer4"])
    root = write_gallery(expl, m, CLASSES, tmp_path, GalleryConfig(per_page=4, size=64))
    rows = list(csv.DictReader((root / "index.csv").read_text().splitlines()))
    assert [int(r["index"]) for r in rows] == m.indices.tolist()
    for r in rows:
        assert (root / r["card"]).is_file() and (root / r["page"]).is_file()
        assert r["true"] != r["predicted"]
    assert len(list((root / "pages").iterdir())) == -(-len(m) // 4)
    pairs = {(int(a), int(b)) for a, b in zip(m.labels, m.preds, strict=True)}
    assert len(list((root / "pairs").iterdir())) == len(pairs)
    card = Image.open(root / rows[0]["card"])
    assert card.width >= 4 * 64 and card.height >= 64  # four panels of 64 px, plus the bars
    meta = json.loads((root / "gallery.json").read_text())
    assert meta["map_resolutions"] == {"layer4": [4, 4]}


def test_gallery_needs_images(tmp_path, case):
    model, m = case
    expl = explain_mistakes(model, m.images, m.labels)
    bare = type(m)(m.indices, m.labels, m.preds, m.probs, m.margins)
    with pytest.raises(ValueError, match="read_mistakes"):
        write_gallery(expl, bare, CLASSES, tmp_path)


def test_predicted_maps_explain_the_stated_predictions(case):
    """With TTA the stated prediction need not be the arg-max: the map must follow the statement."""
    model, m = case
    stated = (m.preds + 1) % 5
    expl = explain_mistakes(model, m.images, m.labels, layers=["layer4"], preds=stated)
    with GradCAM(model, layer="layer4", normalize="none") as cam:
        ref = cam.explain(m.images.float() / 255, targets=stated)
    assert torch.allclose(expl.pred_max[0], ref.raw_max[0], rtol=1e-4, atol=1e-6)
    argmax = explain_mistakes(model, m.images, m.labels, layers=["layer4"])
    assert not torch.allclose(argmax.pred_max[0], expl.pred_max[0])
