"""A gallery folder's bookkeeping: file names, the job it holds, gallery.json and index.csv.

A folder is `cards/`, `pages/`, `pairs/`, `index.csv` and `gallery.json`; the last names the job
(a digest of the mistakes, their images, the classes, layers and drawing settings) and says
whether the gallery is complete, so that a rerun knows what it may keep.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from camlens.atomic import atomic_write_bytes
from camlens.evaluate import Mistakes
from camlens.explain import Explanations

__all__ = ["FOLDERS", "card_names", "job_digest", "prepare_folder", "write_index", "write_meta"]

FOLDERS = ("cards", "pages", "pairs")


def card_names(mistakes: Mistakes, classes: Sequence[str]) -> list[str]:
    """cards/<position>_<test index>_<true>-as-<predicted>.png, in gallery order."""
    columns = (mistakes.indices, mistakes.labels, mistakes.preds)
    return [
        f"{i + 1:04d}_{index:05d}_{classes[t]}-as-{classes[p]}.png"
        for i, (index, t, p) in enumerate(zip(*(c.tolist() for c in columns), strict=True))
    ]


def job_digest(method: str, expl: Explanations, m: Mistakes, classes, config) -> str:
    """What a gallery shows, in 16 hex digits: equal digests, equal pictures."""
    shown = [method, expl.layers, list(classes), asdict(config)]
    if expl.counterfactual is not None:  # the cards carry its verdict line
        shown.append(f"counterfactual of the {expl.counterfactual.region} region")
    h = hashlib.sha256(json.dumps(shown).encode())
    for t in (m.indices, m.labels, m.preds, m.probs, m.margins, m.images):
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def write_meta(root: Path, expl: Explanations, n: int, digest: str, complete: bool) -> None:
    meta = {
        "method": expl.method,
        "layers": list(expl.layers),
        "map_resolutions": {
            layer: list(r) for layer, r in zip(expl.layers, expl.resolutions, strict=True)
        },
        "normalisation": "pred and label maps of an image share a scale; *_max: raw maxima",
        "images": n,
        "job": digest,  # a rerun over this folder with the same job keeps what is written
        "complete": complete,
    }
    atomic_write_bytes(root / "gallery.json", (json.dumps(meta, indent=2) + "\n").encode())


def prepare_folder(root: Path, digest: str) -> bool:
    """Folders ready, leftovers of a killed write gone; True when `root` holds this job."""
    for sub in FOLDERS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    for folder in (root, *(root / sub for sub in FOLDERS)):
        for tmp in folder.glob(".*.tmp"):  # a write killed before its rename
            tmp.unlink()
    try:
        same = json.loads((root / "gallery.json").read_text()).get("job") == digest
    except (OSError, ValueError):
        same = False
    if not same:  # another job's pictures must not pass for this one's
        for sub in FOLDERS:
            for old in (root / sub).glob("*.png"):
                old.unlink()
        (root / "index.csv").unlink(missing_ok=True)
    return same


def write_index(root, expl, mistakes, classes, names, config) -> None:
    """index.csv: a row per card, with its page and each layer's raw map maxima; with the
    counterfactual test, its numbers (`Counterfactual.rows`), region and verdict."""
    header = ["index", "label", "pred", "confidence", "margin", "card", "page"]
    for layer in expl.layers:
        header += [f"{layer}_pred_max", f"{layer}_label_max"]
    cf = expl.counterfactual
    cf_rows = cf.rows() if cf is not None else []
    verdicts = cf.verdicts(list(classes)) if cf is not None else []
    if cf_rows:
        header += ["cf_region", *cf_rows[0], "cf_verdict"]
    rows = [header]
    # every column as Python lists once: a tensor indexed per row is a call per cell
    maxima = torch.stack([expl.pred_max, expl.label_max], 2)  # 2 x (L, M) -> (L, M, 2)
    maxima = maxima.transpose(0, 1).flatten(1).tolist()  # -> (M, 2L): per layer pred, label
    columns = (mistakes.indices, mistakes.labels, mistakes.preds, mistakes.confidence)
    for i, (index, t, p, conf, margin) in enumerate(
        zip(*(c.tolist() for c in columns), mistakes.margins.tolist(), strict=True)
    ):
        row = [
            index,
            classes[t],
            classes[p],
            f"{conf:.6f}",
            f"{margin:.6f}",
            f"cards/{names[i]}",
            f"pages/page-{i // config.per_page + 1:03d}.png",
        ]
        row += [f"{v:.6g}" for v in maxima[i]]
        if cf_rows:
            # predictions after a removal by name, as the label and pred columns
            named = [classes[v] if k.endswith("_pred") else v for k, v in cf_rows[i].items()]
            row += [cf.region, *named, verdicts[i]]
        rows.append(row)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    atomic_write_bytes(root / "index.csv", buf.getvalue().encode())
