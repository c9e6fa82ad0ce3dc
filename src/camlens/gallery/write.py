"""Write one method's gallery folder chunk by chunk, so memory does not grow with the mistakes.

Each chunk's maps are drawn into cards, and each grid page as soon as its cards exist; cards
and pages are encoded and written by a thread pool (zlib and PIL's encoder release the GIL)
while the next chunk is drawn. Only the small numbers, the 32 px images and the maps at native
resolution are kept, for the confusion-pair pages, index.csv and gallery.json at the end.

Every file is written atomically. gallery.json names the job (a digest of the mistakes, their
images, the classes, layers and drawing settings) and says whether it is complete; a run
started again over a folder holding the same job keeps the cards and pages already there, so
a killed run resumes rather than redraws, and a different job starts from an empty folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from camlens.atomic import atomic_write_bytes
from camlens.evaluate import Mistakes
from camlens.explain import Explanations, concat_explanations
from camlens.gallery.draw import (
    CardLayout,
    GalleryConfig,
    draw_card,
    draw_pair_page,
    draw_panels,
    png_bytes,
    stack_cards,
)

__all__ = ["Gallery", "stream_gallery", "write_gallery"]

FOLDERS = ("cards", "pages", "pairs")


@dataclass(frozen=True)
class Gallery:
    """What `stream_gallery` wrote, and the maps it kept for the report."""

    folder: Path  # out/gallery/<method>
    explanations: Explanations  # every mistake's maps, at native resolution
    # wall seconds of maps and drawing; thread seconds of encoding and writing (summed over
    # the pool's threads, so with several cores they can exceed the wall time)
    seconds: dict[str, float]


def write_gallery(
    expl: Explanations,
    mistakes: Mistakes,
    classes: Sequence[str],
    out: str | Path,
    config: GalleryConfig | None = None,
) -> Path:
    """Cards, grid pages, confusion-pair pages and index.csv under `out`/gallery/<method>,
    from maps computed all at once (`stream_gallery` takes them chunk by chunk)."""
    if mistakes.images is None:
        raise ValueError("mistakes carry no images: read them with read_mistakes(path, data.test)")
    return stream_gallery([(mistakes, expl)], mistakes, expl.method, classes, out, config).folder


def card_names(mistakes: Mistakes, classes: Sequence[str]) -> list[str]:
    return [
        f"{i + 1:04d}_{int(index):05d}_{classes[int(t)]}-as-{classes[int(p)]}.png"
        for i, (index, t, p) in enumerate(
            zip(mistakes.indices, mistakes.labels, mistakes.preds, strict=True)
        )
    ]


def _digest(method: str, expl: Explanations, m: Mistakes, classes, config) -> str:
    h = hashlib.sha256(json.dumps([method, expl.layers, list(classes), asdict(config)]).encode())
    for t in (m.indices, m.labels, m.preds, m.probs, m.margins, m.images):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _meta(root: Path, expl: Explanations, n: int, digest: str, complete: bool) -> None:
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


def _prepare(root: Path, digest: str) -> bool:
    """Folders ready, leftovers of a killed write gone; True when `root` holds this job."""
    for sub in FOLDERS:
        (root / sub).mkdir(parents=True, exist_ok=True)
        for tmp in (root / sub).glob(".*.tmp"):  # a write killed before its rename
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


def stream_gallery(
    chunks: Iterable[tuple[Mistakes, Explanations]],
    mistakes: Mistakes,
    method: str,
    classes: Sequence[str],
    out: str | Path,
    config: GalleryConfig | None = None,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> Gallery:
    """Draw and write `out`/gallery/<method> as `chunks` (consecutive rows of `mistakes`, with
    their maps, e.g. from `explain_chunks`) arrive; `mistakes` carry every row's images."""
    config = config or GalleryConfig()
    root, names = Path(out) / "gallery" / method, card_names(mistakes, classes)
    per, total = config.per_page, len(mistakes)
    page_path = [root / "pages" / f"page-{p + 1:03d}.png" for p in range(-(-total // per))]
    seconds, lock = defaultdict(float), threading.Lock()
    parts: list[Explanations] = []
    pending: dict[int, np.ndarray] = {}  # cards of grid pages still to write, by row
    inflight: list[Future] = []
    layout, reuse, digest = None, False, ""

    def write(path: Path, pixels: np.ndarray) -> None:
        began = time.perf_counter()
        data = png_bytes(pixels, config.compress_level)
        wrote = time.perf_counter()
        # no fsync per picture (the rename still keeps each file whole): a gallery is cheap
        atomic_write_bytes(path, data, durable=False)
        with lock:  # threads add to the same sums
            seconds["encode"] += wrote - began
            seconds["write"] += time.perf_counter() - wrote

    bar = tqdm(total=total, desc=f"{method}: cards", unit="card", disable=not progress)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        it, start = iter(chunks), 0
        while True:
            began = time.perf_counter()
            chunk = next(it, None)
            seconds["maps"] += time.perf_counter() - began
            if chunk is None:
                break
            m, expl = chunk
            began = time.perf_counter()
            if layout is None:
                digest = _digest(method, expl, mistakes, classes, config)
                reuse = _prepare(root, digest)
                _meta(root, expl, total, digest, complete=False)
                layout = CardLayout.of(expl, classes, config)
            parts.append(expl)
            rows = range(start, start + len(m))
            done = {r for r in rows if reuse and (root / "cards" / names[r]).exists()}
            todo = [r - start for r in rows if r not in done]  # rows of the chunk to draw
            if todo:
                cards = _draw_cards(pool, m, expl, todo, classes, layout, config)
                pending.update({start + j: card for j, card in zip(todo, cards, strict=True)})
            for r in sorted(done):  # written before a kill: read back only for a missing page
                if not page_path[r // per].exists():
                    pending[r] = np.asarray(Image.open(root / "cards" / names[r]).convert("RGB"))
            wait(inflight)  # the previous chunk's writes: at most two chunks in memory
            inflight = [
                pool.submit(write, root / "cards" / names[start + j], pending[start + j])
                for j in todo
            ]
            start += len(m)
            for p in sorted({r // per for r in rows}):
                page_rows = range(p * per, min(p * per + per, total))
                if page_rows[-1] >= start:
                    continue  # the rest of its cards come with the next chunk
                page_cards = [pending.pop(r, None) for r in page_rows]
                if not (reuse and page_path[p].exists()):
                    inflight.append(pool.submit(write, page_path[p], stack_cards(page_cards)))
            seconds["draw"] += time.perf_counter() - began
            bar.update(len(m))
        wait(inflight)
        bar.close()
        if not parts:
            raise ValueError("no mistakes to draw: stream_gallery needs at least one chunk")
        expl = concat_explanations(parts)
        began = time.perf_counter()
        _pair_pages(pool, write, root, expl, mistakes, classes, config, reuse, progress)
        seconds["draw"] += time.perf_counter() - began
    _write_index(root, expl, mistakes, classes, names, config)
    _meta(root, expl, total, digest, complete=True)
    return Gallery(root, expl, dict(seconds))


def _draw_cards(pool, m, expl, rows, classes, layout, config) -> list[np.ndarray]:
    """The cards of `rows` of a chunk, drawn by the pool (numpy copies release the GIL)."""
    idx = torch.tensor(rows)
    m, expl = m.select(idx), expl.select(idx)
    panels = draw_panels(expl, m.images, config)
    draw = partial(draw_card, m=m, expl=expl, panels=panels, classes=classes, layout=layout)
    return list(pool.map(draw, range(len(rows))))


def wait(futures: list[Future]) -> None:
    for f in futures:
        f.result()  # raises a failed write's error here


def _pair_pages(pool, write, root, expl, mistakes, classes, config, reuse, progress) -> None:
    """One page per confusion pair (a large pair over several pages)."""
    pairs: dict[tuple[int, int], list[int]] = {}
    for i, (t, p) in enumerate(zip(mistakes.labels.tolist(), mistakes.preds.tolist(), strict=True)):
        pairs.setdefault((t, p), []).append(i)
    per, jobs = config.per_pair_page, []
    for (t, p), rows in sorted(pairs.items(), key=lambda kv: -len(kv[1])):
        for part, first in enumerate(range(0, len(rows), per)):
            name = f"{classes[t]}-as-{classes[p]}" + (f"-{part + 1}" if part else "") + ".png"
            if not (reuse and (root / "pairs" / name).exists()):
                jobs.append((name, rows[first : first + per], len(rows), t, p))
    last = len(expl.layers) - 1
    inflight: list[Future] = []
    for name, rows, count, t, p in tqdm(
        jobs, desc=f"{expl.method}: pair pages", unit="page", disable=not progress
    ):
        idx = torch.tensor(rows)
        panels = draw_panels(expl.select(idx), mistakes.images[idx], config, layers=[last])
        title = (
            f"true {classes[t]} predicted {classes[p]}: {count} images "
            f"({expl.method} at {expl.layers[-1]}; image | predicted-class map | true-class map)"
        )
        page = draw_pair_page(rows, mistakes, panels, title, config)
        wait(inflight[:-2])  # at most a few pages in memory
        inflight = inflight[-2:] + [pool.submit(write, root / "pairs" / name, page)]
    wait(inflight)


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
