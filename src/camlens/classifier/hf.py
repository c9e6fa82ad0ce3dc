"""`--model hf:PATH`: a Hugging Face `transformers` image classifier from a local folder.

    model, stated = load_hf("path/to/saved")   # from_pretrained(..., local_files_only=True)

camlens never downloads: PATH is a folder written by `save_pretrained` (a model and its image
processor), or a name already in the local cache. The image processor states the input the
model was trained on: its size (`crop_size`, else `size`: height or shortest edge) and its
mean/std, which `Classifier` applies to camlens's [0, 1] images (the processor's 1/255 rescale
is what camlens's [0, 1] already is). camlens makes every image square at that side, so a
processor's crop_pct (resize larger, then crop the centre) is not applied: it is said in the
model's facts. Needs the optional extra: pip install 'camlens[hf]'.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from camlens.model import CheckpointError

__all__ = ["hf_size", "load_hf"]


def _transformers(spec: str) -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError as e:
        raise CheckpointError(
            f"--model {spec} needs transformers (pip install 'camlens[hf]'), which does not "
            f"import: {e}"
        ) from None


def _processor(spec: str, path: str) -> Any:
    """The folder's image processor, or None when it has none (then --mean/--std say it)."""
    transformers = _transformers(spec)
    try:
        return transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except Exception:  # no preprocessor_config.json: the flags must state the normalisation
        return None


def hf_size(spec: str) -> int | None:
    """The side the folder's image processor feeds the model: its crop, else its size."""
    processor = _processor(spec, spec.partition(":")[2])
    return None if processor is None else _side(processor)


def _side(processor: Any) -> int | None:
    for key in ("crop_size", "size"):
        size = getattr(processor, key, None)
        if size is None:
            continue
        get = size.get if isinstance(size, dict) else lambda k, s=size: getattr(s, k, None)
        side = get("height") or get("shortest_edge")
        if side:
            return int(side)
    return None


def load_hf(spec: str) -> tuple[nn.Module, dict]:
    """The model in the folder (random or trained weights, as saved) and what its image
    processor states: mean, std, input_size, and what camlens does not apply (crop_pct)."""
    path = spec.partition(":")[2]
    transformers = _transformers(spec)
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            path, local_files_only=True
        )
    except Exception as e:  # not a folder, no config.json, not in the cache
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"--model {spec}: no image classifier saved at {path!r} ({first}); hf: takes a "
            "folder written by save_pretrained, or a name in the local cache (camlens never "
            "downloads)"
        ) from None
    stated: dict = {}
    processor = _processor(spec, path)
    if processor is not None:
        if getattr(processor, "image_mean", None) is not None:
            stated["mean"] = tuple(float(v) for v in processor.image_mean)
            stated["std"] = tuple(float(v) for v in processor.image_std)
        side = _side(processor)
        if side:
            stated["input_size"] = (3, side, side)
        if getattr(processor, "crop_pct", None):
            stated["crop_pct"] = float(processor.crop_pct)
    return model, stated
