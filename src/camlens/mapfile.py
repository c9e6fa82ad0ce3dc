"""The maps as a file: OUT/maps/<method>.safetensors, an output of the explain stream.

For work after the run (a notebook, another tool, a viewer) without computing a map again:
each explained mistake's test-set row, true and predicted class, and its maps at each layer's
native resolution (raw, before upsampling and normalisation; `Explanations.layer_maps` makes
the shown pixels from them). `read_maps` reads it back; nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from camlens.atomic import atomic_save_tensors
from camlens.evaluate import Mistakes
from camlens.explain import Explanations

__all__ = ["MapFile", "read_maps"]

KINDS = ("pred", "label", "contrast")  # the maps of each layer: their Explanations field


class MapFile:
    """Writes `path` when the stream closes (the maps at native resolution are small: a few
    hundred bytes per image and layer), atomically; the counterfactual stays in index.csv."""

    def __init__(self, path: str | Path, mistakes: Mistakes) -> None:
        self.path, self.mistakes = Path(path), mistakes

    def __enter__(self) -> MapFile:
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # nothing held between chunks

    def take(self, mistakes: Mistakes, maps: Explanations) -> None:
        pass  # the joined maps come to close

    def close(self, maps: Explanations) -> Path:
        m = self.mistakes
        tensors = {
            "indices": m.indices.cpu(),  # rows of the test split
            "labels": m.labels.cpu(),
            "preds": m.preds.cpu(),
            "logits": maps.logits,  # (M, K)
            "pred_max": maps.pred_max,  # (L, M)
            "label_max": maps.label_max,
        }
        for kind in KINDS:
            for li, low in enumerate(getattr(maps, f"{kind}_low") or ()):
                tensors[f"{kind}/{li}"] = low.contiguous()  # (M, h, w)
        meta = {
            "method": maps.method,
            "layers": json.dumps(maps.layers),
            "size": json.dumps(maps.size),
            "contrast": json.dumps(maps.contrast_low is not None),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(self.path, tensors, meta)
        return self.path


def read_maps(path: str | Path) -> tuple[dict[str, torch.Tensor], Explanations]:
    """({"indices", "labels", "preds"}, the Explanations) of a file `MapFile` wrote."""
    with safe_open(str(path), framework="pt") as f:
        names, meta = f.keys(), f.metadata()
        t = {k: f.get_tensor(k) for k in names}
    layers = tuple(json.loads(meta["layers"]))

    def maps(kind: str) -> tuple[torch.Tensor, ...]:
        return tuple(t[f"{kind}/{li}"] for li in range(len(layers)))

    expl = Explanations(
        method=meta["method"],
        layers=layers,
        resolutions=tuple(tuple(t[f"pred/{li}"].shape[1:]) for li in range(len(layers))),
        size=tuple(json.loads(meta["size"])),
        pred_low=maps("pred"),
        label_low=maps("label"),
        contrast_low=maps("contrast") if json.loads(meta["contrast"]) else None,
        pred_max=t["pred_max"],
        label_max=t["label_max"],
        logits=t["logits"],
    )
    return {k: t[k] for k in ("indices", "labels", "preds")}, expl
