import csv
import json

import pytest
from PIL import Image

from camlens.explain import explain_mistakes
from camlens.gallery import GalleryConfig, write_gallery

CLASSES = tuple(f"k{i}" for i in range(5))


def test_gallery_files_and_index(tmp_path, tiny_mistakes):
    model, m = tiny_mistakes
    expl = explain_mistakes(model, m.images, m.labels, layers=["layer4"])
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
    expl = explain_mistakes(model, m.images, m.labels)
    bare = type(m)(m.indices, m.labels, m.preds, m.probs, m.margins)
    with pytest.raises(ValueError, match="read_mistakes"):
        write_gallery(expl, bare, CLASSES, tmp_path)
