"""The viewer's state: one model behind one lock, the rows, the uploads and a bounded map cache.

Every use of the model (a forward, a map, a counterfactual) holds `Viewer.lock`, so that two
tabs asking at once never interleave two engines' hooks on the shared model; the engines
register their hooks per call and remove them in `finally` (camlens.cam), so none is left
behind. Maps come from `camlens.explain.engine_for`, the one place engines are built, and are
cached by (image, method, layer, target) in a least-recently-used dict of bounded size.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from camlens.cam import Target
from camlens.data import Preprocess
from camlens.evaluate import as_float_images, predict
from camlens.explain import ExplainPlan, engine_for
from camlens.mapfile import read_maps
from camlens.metrics.counterfactual import CounterfactualConfig, counterfactual
from camlens.view.folder import Folder
from camlens.view.rows import Rows
from camlens.view.upload import read_upload

__all__ = ["Cache", "Image", "Source", "Viewer", "ViewError"]

UPLOADS_KEPT = 16  # uploaded images a viewer keeps (the oldest is forgotten)
MAPS_KEPT = 512  # maps the cache keeps: 512 x 224 x 224 float32 is about 100 MB


class ViewError(ValueError):
    """A request the viewer cannot answer: one line, shown in the page."""


class Cache:
    """A thread-safe least-recently-used dict of at most `size` entries."""

    def __init__(self, size: int) -> None:
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Source:
    """What a viewer is opened on: a model taking [0, 1] images, its test data, and where."""

    model: nn.Module  # eval mode, on its device
    images: object  # the test split's (N, 3, S, S) uint8 images: a tensor or an ImageStore
    labels: Tensor  # (N,)
    classes: tuple[str, ...]
    layers: tuple[str, ...]  # the layers the page offers, the default first
    methods: tuple[str, ...]  # the methods the page offers, the default first
    preprocess: Preprocess  # how an upload becomes the model's input, as the data's images
    folder: Folder | None = None  # the opened folder (cards, compare result), if any


@dataclass(frozen=True)
class Image:
    """One image the page shows: a test image (`index`) or an upload (`upload`)."""

    key: str  # "t<index>" or "u<n>": the id the page names it by
    pixels: Tensor  # (3, S, S) uint8
    label: int | None  # None: an upload, whose truth is unknown
    index: int | None = None


@dataclass
class Viewer:
    """The state behind every endpoint (see the module docstring)."""

    source: Source
    plan: ExplainPlan = field(default_factory=ExplainPlan)
    lock: threading.Lock = field(default_factory=threading.Lock)
    maps: Cache = field(default_factory=lambda: Cache(MAPS_KEPT))
    logits: Cache = field(default_factory=lambda: Cache(4 * MAPS_KEPT))
    uploads: Cache = field(default_factory=lambda: Cache(UPLOADS_KEPT))
    _rows: Rows | None = None
    _all: Rows | None = None
    _count: int = 0
    _stored: dict = field(default_factory=dict)  # method -> read_maps of the folder's file

    def rows(self, correct: bool = False) -> Rows:
        """The mistakes (the folder's misclassified.csv, else predicted once); with
        `correct`, every test image (predicted once, on first request)."""
        folder = self.source.folder
        with self.lock:
            if self._rows is None and folder is not None and folder.mistakes is not None:
                self._rows = Rows.of_mistakes(folder.mistakes, folder.cf)
            if self._all is None and (correct or self._rows is None):
                logits = predict(self.source.model, self.source.images, self.plan.eval_batch_size)
                self._all = Rows.of_logits(logits, self.source.labels)
                if self._rows is not None:
                    self._all = self._all.with_cf_of(self._rows)
            if self._rows is None:
                self._rows = self._all
        return self._all if correct else self._rows

    def image(self, key: str) -> Image:
        """The image the page calls `key`: "t<index>" of the test split, "u<n>" an upload."""
        if key.startswith("u"):
            found = self.uploads.get(key)
            if found is None:
                raise ViewError(f"no upload {key!r} (uploads are kept for the {UPLOADS_KEPT} last)")
            return found
        if not key.startswith("t") or not key[1:].isdigit():
            raise ViewError(f"unknown image {key!r}")
        index = int(key[1:])
        if index >= len(self.source.labels):
            raise ViewError(f"no test image {index}: the split has {len(self.source.labels)}")
        pixels = self.source.images[index : index + 1][0]
        return Image(key, pixels, int(self.source.labels[index]), index)

    def add_upload(self, data: bytes, name: str) -> Image:
        """An uploaded photo decoded and preprocessed as the data's images; kept by key."""
        pixels = read_upload(data, name, self.source.preprocess)
        with self.lock:
            self._count += 1
            key = f"u{self._count}"
        found = Image(key, pixels, None)
        self.uploads.put(key, found)
        return found

    def logits_of(self, img: Image) -> Tensor:
        """(K,) logits of one image, cached."""
        found = self.logits.get(img.key)
        if found is None:
            with self.lock:
                found = predict(self.source.model, img.pixels[None], 1)[0].cpu()
            self.logits.put(img.key, found)
        return found

    def targets(self, img: Image, target: str) -> tuple[int, int | None]:
        """(the class a map explains, the class it is contrasted with or None) for `target`:
        pred, true, contrast (pred rather than true), or a class index."""
        pred = int(self.logits_of(img).argmax())
        if target == "pred":
            return pred, None
        if target in ("true", "contrast"):
            if img.label is None:
                raise ViewError("an upload has no true class: pick pred or a class")
            return (img.label, None) if target == "true" else (pred, img.label)
        if target.isdigit() and int(target) < len(self.source.classes):
            return int(target), None
        raise ViewError(f"unknown target {target!r}: pred, true, contrast or a class index")

    def check(self, method: str, layer: str) -> None:
        if method not in self.source.methods:
            raise ViewError(
                f"unknown method {method!r}: choose from {', '.join(self.source.methods)}"
            )
        if layer not in self.source.layers:
            raise ViewError(f"unknown layer {layer!r}: choose from {', '.join(self.source.layers)}")

    def cam(self, img: Image, method: str, layer: str, target: str) -> tuple[Tensor, dict]:
        """(H, W) map in [0, 1] ([-1, 1] for a contrast) and how it was got (cached, ms)."""
        self.check(method, layer)
        cls, versus = self.targets(img, target)
        key = (img.key, method, layer, cls, versus)
        found = self.maps.get(key)
        if found is not None:
            return found, {"cached": True, "ms": 0.0, "class": cls, "versus": versus}
        stored = self.stored(img, method, layer, (cls, versus))
        if stored is not None:
            self.maps.put(key, stored)
            return stored, {"cached": False, "ms": 0.0, "class": cls, "versus": versus,
                            "stored": True}  # fmt: skip
        started = time.perf_counter()
        spec = torch.tensor([cls]) if versus is None else Target(cls, versus=versus)
        x = as_float_images(img.pixels[None])
        with self.lock:
            device = next(self.source.model.parameters()).device
            try:
                with engine_for(method, self.source.model, [layer], self.plan) as engine:
                    result = engine.explain(x.to(device), spec)
            except (ValueError, RuntimeError) as e:  # e.g. a contrast of a non-linear method
                raise ViewError(f"{method} at {layer}: {str(e).splitlines()[0]}") from None
        maps = result.maps[0].cpu()  # (1, H, W) -> (H, W)
        self.maps.put(key, maps)
        ms = (time.perf_counter() - started) * 1000
        return maps, {"cached": False, "ms": round(ms, 1), "class": cls, "versus": versus}

    def stored(self, img: Image, method: str, layer: str, target: tuple) -> Tensor | None:
        """The map the folder's maps file holds (OUT/maps/METHOD.safetensors: the run's own
        maps, `--output maps`) for a test image's predicted or true class or their contrast,
        normalised as a computed one; None where the file has none."""
        folder = self.source.folder
        if folder is None or img.index is None or method not in folder.maps:
            return None
        with self.lock:
            if method not in self._stored:
                self._stored[method] = read_maps(folder.maps[method])
        rows, expl = self._stored[method]
        hit = (rows["indices"] == img.index).nonzero().flatten()[:1]
        if not len(hit) or layer not in expl.layers:
            return None
        pred, label = int(rows["preds"][hit]), int(rows["labels"][hit])
        kind = {(pred, None): 0, (label, None): 1, (pred, label): 2}.get(target)
        triple = expl.select(hit).layer_maps(expl.layers.index(layer))  # 3 x (1, H, W) or None
        if kind is None or triple[kind] is None:
            return None
        maps = triple[kind][0]
        if kind == 2:
            return maps  # signed, in [-1, 1] as the engine's contrast
        low, high = maps.min(), maps.max()  # pair-scaled -> min-max, as the engine's own
        return (maps - low) / (high - low) if high > low else torch.zeros_like(maps)

    def counterfactual(self, img: Image, method: str, layer: str, target: str, fraction: float):
        """Remove the top `fraction` of the map (and as much of a random map), ask again."""
        if not 0 < fraction < 1:
            raise ViewError(f"fraction must be between 0 and 1, got {fraction}")
        maps, how = self.cam(img, method, layer, target)
        logits = self.logits_of(img)
        pred = int(logits.argmax())
        # the margin is pred's over the true class; an upload's over its runner-up
        label = img.label if img.label is not None else int(logits.topk(2).indices[1])
        region = (
            "contrast"
            if how["versus"] is not None
            else f"{self.source.classes[how['class']]}-class"
        )
        config = CounterfactualConfig(
            fractions=(fraction,), headline=fraction, seed=0, region=region
        )
        with self.lock:
            device = next(self.source.model.parameters()).device
            cf = counterfactual(
                self.source.model,
                as_float_images(img.pixels[None]).to(device),
                maps[None].to(device),
                torch.tensor([pred], device=device),
                torch.tensor([label], device=device),
                config,
                seeds=torch.tensor([img.index or 0]),
            )
        names = self.source.classes
        return {
            "fraction": fraction,
            "pred": names[pred],
            "versus": names[label],
            "margin": round(float(cf.margin[0]), 4),
            "margin_after": round(float(cf.margin_map[0, 0]), 4),
            "margin_random": round(float(cf.margin_random[0, 0]), 4),
            "pred_after": names[int(cf.preds_map[0, 0])],
            "beats_random": bool(cf.beat_random[0, 0]),
            "line": cf.verdicts(list(names))[0],
            "map": how,
        }

    def folder_root(self) -> Path | None:
        return None if self.source.folder is None else self.source.folder.root
