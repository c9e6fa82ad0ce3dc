"""Write one method's gallery folder: every picture in parallel, then index.csv and gallery.json."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from camlens.atomic import atomic_write_bytes
from camlens.evaluate import Mistakes
from camlens.explain import Explanations
from camlens.gallery.draw import (
    GalleryConfig,
    draw_card,
    draw_pair_page,
    draw_panels,
    png_bytes,
    stack_cards,
)

__all__ = ["write_gallery"]


def write_gallery(
    expl: Explanations,
    mistakes: Mistakes,
    classes: Sequence[str],
    out: str | Path,
    config: GalleryConfig | None = None,
) -> Path:
    """Cards, grid pages, confusion-pair pages and index.csv under `out`/gallery/<method>.

    One folder per method, so that galleries of several methods sit side by side.
    """
    config = config or GalleryConfig()
    if mistakes.images is None:
        raise ValueError("mistakes carry no images: read them with read_mistakes(path, data.test)")
    root = Path(out) / "gallery" / expl.method
    for sub in ("cards", "pages", "pairs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    panels = draw_panels(expl, mistakes.images, config)
    cards = [draw_card(i, mistakes, expl, panels, classes, config) for i in range(len(mistakes))]
    names = [
        f"{i + 1:04d}_{int(mistakes.indices[i]):05d}_"
        f"{classes[int(mistakes.labels[i])]}-as-{classes[int(mistakes.preds[i])]}.png"
        for i in range(len(mistakes))
    ]
    jobs = [(root / "cards" / name, card) for name, card in zip(names, cards, strict=True)]
    for p, start in enumerate(range(0, len(cards), config.per_page)):
        page = stack_cards(cards[start : start + config.per_page])
        jobs.append((root / "pages" / f"page-{p + 1:03d}.png", page))
    pairs: dict[tuple[int, int], list[int]] = {}
    for i in range(len(mistakes)):
        pairs.setdefault((int(mistakes.labels[i]), int(mistakes.preds[i])), []).append(i)
    for (label, pred), rows in sorted(pairs.items(), key=lambda kv: -len(kv[1])):
        title = (
            f"true {classes[label]} predicted {classes[pred]}: {len(rows)} images "
            f"({expl.method} at {expl.layers[-1]}; image | predicted-class map | true-class map)"
        )
        page = draw_pair_page(rows, mistakes, panels, title, config)
        jobs.append((root / "pairs" / f"{classes[label]}-as-{classes[pred]}.png", page))
    # zlib releases the GIL: threads encode PNGs in parallel. No fsync per picture (the rename
    # still keeps each file whole); a gallery is cheap to redo, unlike a checkpoint.
    def write(job: tuple) -> None:  # (path, picture)
        atomic_write_bytes(job[0], png_bytes(job[1]), durable=False)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(write, jobs))
    _write_index(root, expl, mistakes, classes, names, config)
    return root


def _write_index(root, expl, mistakes, classes, names, config) -> None:
    header = ["index", "label", "pred", "confidence", "margin", "card", "page"]
    for layer in expl.layers:
        header += [f"{layer}_pred_max", f"{layer}_label_max"]
    rows = [header]
    for i in range(len(mistakes)):
        row = [
            int(mistakes.indices[i]),
            classes[int(mistakes.labels[i])],
            classes[int(mistakes.preds[i])],
            f"{float(mistakes.confidence[i]):.6f}",
            f"{float(mistakes.margins[i]):.6f}",
            f"cards/{names[i]}",
            f"pages/page-{i // config.per_page + 1:03d}.png",
        ]
        for layer_idx in range(len(expl.layers)):
            row += [
                f"{float(expl.pred_max[layer_idx, i]):.6g}",
                f"{float(expl.label_max[layer_idx, i]):.6g}",
            ]
        rows.append(row)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    atomic_write_bytes(root / "index.csv", buf.getvalue().encode())
    meta = {
        "method": expl.method,
        "layers": list(expl.layers),
        "map_resolutions": {
            layer: list(r) for layer, r in zip(expl.layers, expl.resolutions, strict=True)
        },
        "normalisation": "pred and label maps of an image share a scale; *_max: raw maxima",
        "images": len(mistakes),
    }
    atomic_write_bytes(root / "gallery.json", (json.dumps(meta, indent=2) + "\n").encode())
