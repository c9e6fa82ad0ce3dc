"""Write one method's gallery folder chunk by chunk, so memory does not grow with the mistakes.

A chunk's overlays are made in one batch; its cards are then drawn, encoded and written by a
thread pool (numpy and zlib release the GIL) while the caller computes the next chunk's maps;
a card page is written as soon as its cards exist, from their encoded rows (`png.py`). Only
the small numbers, the 32 px images and the maps at native resolution are kept, for the
confusion-pair pages, index.csv and gallery.json at the end.

Every file is written atomically. A run started again over a folder holding the same job
(`folder.py`: gallery.json names it) keeps the cards and pages already there, so a killed run
resumes rather than redraws; a different job starts from an empty folder.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from camlens.atomic import atomic_write_bytes
from camlens.evaluate import Mistakes
from camlens.explain import Explanations
from camlens.gallery.draw import (
    GREY,
    CardLayout,
    GalleryConfig,
    Panels,
    draw_card,
    draw_pair_page,
    draw_panels,
)
from camlens.gallery.folder import (
    card_names,
    job_digest,
    prepare_folder,
    write_index,
    write_meta,
)
from camlens.gallery.png import Deflated, deflate_rows, png_of
from camlens.outputs import consume

__all__ = ["Gallery", "GalleryWriter", "stream_gallery", "write_gallery"]

PAGE_GAP = 8  # pixel rows between two cards of a card page
PAIR_BATCH = 256  # pair-page images whose overlays are made in one batch


@dataclass(frozen=True)
class Gallery:
    """What `stream_gallery` wrote, and the maps it kept for the report."""

    folder: Path  # out/gallery/<method>
    explanations: Explanations  # every mistake's maps, at native resolution
    # wall seconds of maps, overlays and pair pages (the caller's thread); thread seconds of
    # drawing cards, encoding and writing (summed over the pool, so they can exceed the wall)
    seconds: dict[str, float]


def write_gallery(
    expl: Explanations,
    mistakes: Mistakes,
    classes: Sequence[str],
    out: str | Path,
    config: GalleryConfig | None = None,
) -> Path:
    """Cards, card pages, confusion-pair pages and index.csv under `out`/gallery/<method>,
    from maps computed all at once (`stream_gallery` takes them chunk by chunk)."""
    if mistakes.images is None:
        raise ValueError("mistakes carry no images: read them with read_mistakes(path, data.test)")
    return stream_gallery([(mistakes, expl)], mistakes, expl.method, classes, out, config).folder


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
    their maps, e.g. from `stream_mistake_maps`) arrive; `mistakes` carry every row's images.
    The gallery alone as the stream's output (`GalleryWriter`)."""
    with GalleryWriter(out, mistakes, method, classes, config, workers, progress) as writer:
        return consume(chunks, {"gallery": writer})[1]["gallery"]


class GalleryWriter:
    """The gallery as an output of the explain stream (`camlens.outputs.Output`).

    The pool draws, encodes and writes a chunk's cards while the stream computes the next
    chunk's maps; at most two chunks are in flight. `close` writes the confusion-pair pages,
    index.csv and gallery.json, and returns the `Gallery`.
    """

    def __init__(
        self,
        out: str | Path,
        mistakes: Mistakes,
        method: str,
        classes: Sequence[str],
        config: GalleryConfig | None = None,
        workers: int | None = None,
        progress: bool = False,
    ) -> None:
        self.job = _Job(
            Path(out) / "gallery" / method, mistakes, classes, config or GalleryConfig()
        )
        self.method, self.progress, self.start = method, progress, 0
        self.pool = ThreadPoolExecutor(workers or os.cpu_count() or 1)
        self.bar = tqdm(
            total=len(mistakes), desc=f"{method}: maps, cards", unit="card", disable=not progress
        )
        self.since = time.perf_counter()

    def __enter__(self) -> GalleryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        self.pool.shutdown(wait=True)  # what was queued is written whole, or raised in close

    def take(self, mistakes: Mistakes, maps: Explanations) -> None:
        # the time since the last chunk: the stream's maps (and any other output's take)
        self.job.add(maps=time.perf_counter() - self.since)
        if self.start == 0:
            self.job.begin(self.method, maps)
        self.job.cards(self.pool, self.start, mistakes, maps)
        self.job.pages(self.pool, upto=self.start)  # the previous chunk's cards are done or nearly
        self.start += len(mistakes)
        self.bar.update(len(mistakes))
        self.since = time.perf_counter()

    def close(self, maps: Explanations) -> Gallery:
        self.job.add(maps=time.perf_counter() - self.since)
        self.job.pages(self.pool, upto=self.start)
        self.bar.close()
        self.job.pair_pages(self.pool, maps, self.progress)
        self.job.finish(maps)
        return Gallery(self.job.root, maps, dict(self.job.seconds))


class _Job:
    """One gallery folder being written: what is pending, what is reused, where time goes."""

    def __init__(self, root: Path, mistakes: Mistakes, classes, config: GalleryConfig) -> None:
        self.root, self.mistakes, self.classes, self.config = root, mistakes, classes, config
        self.names = card_names(mistakes, classes)
        n_pages = -(-len(mistakes) // config.per_page)
        self.page_paths = [root / "pages" / f"page-{p + 1:03d}.png" for p in range(n_pages)]
        self.pending: dict[int, Future | Deflated] = {}  # cards of pages not yet written
        self.next_page, self.inflight = 0, []
        self.seconds, self.lock = defaultdict(float), threading.Lock()
        self.reuse, self.digest, self.layout, self.gap = False, "", None, None

    def add(self, **seconds: float) -> None:
        with self.lock:  # the pool's threads add to the same sums
            for k, v in seconds.items():
                self.seconds[k] += v

    def begin(self, method: str, expl: Explanations) -> None:
        self.digest = job_digest(method, expl, self.mistakes, self.classes, self.config)
        self.reuse = prepare_folder(self.root, self.digest)
        write_meta(self.root, expl, len(self.mistakes), self.digest, complete=False)
        self.layout = CardLayout.of(expl, self.classes, self.config)
        gap = np.full((PAGE_GAP, self.layout.template.shape[1], 3), 255, np.uint8)
        gap[PAGE_GAP // 2] = GREY  # the rule between two cards of a page
        self.gap = deflate_rows(gap, self.config.compress_level)

    def write(self, path: Path, parts: list[Deflated]) -> None:
        began = time.perf_counter()
        # no fsync per picture (the rename still keeps each file whole): a gallery is cheap
        atomic_write_bytes(path, png_of(parts), durable=False)
        self.add(write=time.perf_counter() - began)

    def card(self, n: int, row: int, m: Mistakes, expl: Explanations, panels) -> Deflated:
        """Draw, encode and write the card of row `n` of `m`, `expl` and `panels`."""
        began = time.perf_counter()
        pixels = draw_card(
            n, m=m, expl=expl, panels=panels, classes=self.classes, layout=self.layout
        )
        drawn = time.perf_counter()
        part = deflate_rows(pixels, self.config.compress_level)
        self.add(draw=drawn - began, encode=time.perf_counter() - drawn)
        self.write(self.root / "cards" / self.names[row], [part])
        return part

    def cards(self, pool, start: int, m: Mistakes, expl: Explanations) -> None:
        """Queue the chunk's cards (those not already on disk) for the pool."""
        rows = range(start, start + len(m))
        done = {r for r in rows if self.reuse and (self.root / "cards" / self.names[r]).exists()}
        todo = [r - start for r in rows if r not in done]  # rows of the chunk to draw
        if todo:
            began = time.perf_counter()
            idx = torch.tensor(todo)
            m, expl = m.select(idx), expl.select(idx)
            # the overlays here, batched, where torch may use its own threads; the pool's
            # threads only compose and encode (numpy, zlib), so no thread pool nests in another
            panels = draw_panels(expl, m.images, self.config)
            self.add(overlays=time.perf_counter() - began)
            for n, j in enumerate(todo):
                self.pending[start + j] = pool.submit(self.card, n, start + j, m, expl, panels)
        per = self.config.per_page
        for r in sorted(done):  # written before a kill: read back only for a missing page
            if not self.page_paths[r // per].exists():
                pixels = np.asarray(Image.open(self.root / "cards" / self.names[r]).convert("RGB"))
                self.pending[r] = deflate_rows(pixels, self.config.compress_level)

    def pages(self, pool, upto: int) -> None:
        """Queue the card pages whose cards all lie before row `upto`."""
        per, total = self.config.per_page, len(self.mistakes)
        wait(self.inflight)  # earlier pages' writes: bounded memory
        self.inflight = []
        while self.next_page * per < total and min(self.next_page * per + per, total) <= upto:
            p = self.next_page
            rows = range(p * per, min(p * per + per, total))
            found = [self.pending.pop(r, None) for r in rows]
            cards = [f.result() if isinstance(f, Future) else f for f in found]
            if not (self.reuse and self.page_paths[p].exists()):
                parts = [x for card in cards for x in (card, self.gap)]
                self.inflight.append(pool.submit(self.write, self.page_paths[p], parts))
            self.next_page += 1

    def pair_pages(self, pool, expl: Explanations, progress: bool) -> None:
        """One page per confusion pair (a large pair over several pages)."""
        m, classes, config = self.mistakes, self.classes, self.config
        pairs: dict[tuple[int, int], list[int]] = {}
        for i, (t, p) in enumerate(zip(m.labels.tolist(), m.preds.tolist(), strict=True)):
            pairs.setdefault((t, p), []).append(i)
        per, jobs = config.per_pair_page, []
        for (t, p), rows in sorted(pairs.items(), key=lambda kv: -len(kv[1])):
            for part, first in enumerate(range(0, len(rows), per)):
                name = f"{classes[t]}-as-{classes[p]}" + (f"-{part + 1}" if part else "") + ".png"
                if not (self.reuse and (self.root / "pairs" / name).exists()):
                    jobs.append((name, rows[first : first + per], len(rows), t, p))
        last = len(expl.layers) - 1
        bar = tqdm(
            total=len(jobs), desc=f"{expl.method}: pair pages", unit="page", disable=not progress
        )
        # the overlays of many pages in one batch: at 1,000 classes most pairs hold an image or
        # two, and a batch per page cost ~0.4 s of fixed overheads per page
        for batch in _batches(jobs, PAIR_BATCH):
            began = time.perf_counter()
            idx = torch.tensor([r for job in batch for r in job[1]])
            panels = draw_panels(
                expl.select(idx), m.images[idx], config, layers=[last], with_contrast=False
            )
            start = 0
            for name, rows, count, t, p in batch:
                title = (
                    f"true {classes[t]} predicted {classes[p]}: {count} images ({expl.method} at "
                    f"{expl.layers[-1]}; image | predicted-class map | true-class map)"
                )
                page = draw_pair_page(rows, m, _rows_of(panels, start, len(rows)), title, config)
                start += len(rows)
                wait(self.inflight[:-2])  # at most a few pages in memory
                self.inflight = self.inflight[-2:] + [pool.submit(self.pair_page, name, page)]
                bar.update()
            self.add(pair_pages=time.perf_counter() - began)
        bar.close()
        wait(self.inflight)

    def pair_page(self, name: str, page: np.ndarray) -> None:
        began = time.perf_counter()
        part = deflate_rows(page, self.config.compress_level)
        self.add(encode=time.perf_counter() - began)
        self.write(self.root / "pairs" / name, [part])

    def finish(self, expl: Explanations) -> None:
        write_index(self.root, expl, self.mistakes, self.classes, self.names, self.config)
        write_meta(self.root, expl, len(self.mistakes), self.digest, complete=True)


def _batches(jobs: list[tuple], rows: int) -> list[list[tuple]]:
    """Consecutive pair-page jobs grouped so that a group holds about `rows` images (a page
    holds at most `per_pair_page`, so a group holds at least one page)."""
    out: list[list[tuple]] = []
    held = rows
    for job in jobs:
        if held + len(job[1]) > rows:
            out.append([])
            held = 0
        out[-1].append(job)
        held += len(job[1])
    return out


def _rows_of(panels: Panels, start: int, n: int) -> Panels:
    """Rows start .. start + n of `panels`, every layer's."""
    cut = slice(start, start + n)
    return Panels(
        panels.images[cut],
        [x[cut] for x in panels.pred],
        [x[cut] for x in panels.label],
        None if panels.contrast is None else [x[cut] for x in panels.contrast],
    )


def wait(futures: list[Future]) -> None:
    for f in futures:
        f.result()  # raises a failed write's error here
