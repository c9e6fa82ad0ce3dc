"""`open_model`: the data at the size the model takes, then the model for its classes.

A camlens checkpoint knows its classes and size; any other model is built for the data's
class count and checked with one forward of a dummy batch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from camlens.classifier.spec import (
    ARCHITECTURES,
    Classifier,
    ModelConfig,
    build_architecture,
    is_checkpoint,
    native_size,
)
from camlens.classifier.weights import head_classes, load_weights, read_state_dict
from camlens.data import DataConfig, DataError, Dataset, Preprocess, load_dataset
from camlens.model import SHIPPED_MODELS, CheckpointError, load_checkpoint, read_checkpoint_meta

__all__ = ["Opened", "build_classifier", "open_model", "stated_size"]


@dataclass(frozen=True)
class Opened:
    """A model ready for every camlens path, and the data it is evaluated on."""

    model: nn.Module  # takes (N, 3, S, S) images in [0, 1], returns (N, K) logits; eval mode
    data: Dataset  # its classes are the model's
    meta: dict  # a camlens checkpoint's json; {} for other models
    facts: dict[str, str]  # what the report's summary says of the model


def _check_classes(model: nn.Module, data: Dataset, spec: str, device: torch.device) -> None:
    """One forward of a dummy batch: the model runs at this size and has a logit per class."""
    images = torch.zeros(1, 3, data.image_size, data.image_size, device=device)
    try:
        with torch.no_grad():
            logits = model(images)
    except Exception as e:
        raise CheckpointError(
            f"{spec} fails on {data.image_size}-px images ({type(e).__name__}: {e}): "
            "pass the size it takes with --image-size"
        ) from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise CheckpointError(f"{spec} must return (N, K) logits, got {type(logits).__name__}")
    if logits.shape[1] != len(data.classes):
        raise CheckpointError(
            f"{spec} outputs {logits.shape[1]} classes but the data has {len(data.classes)} "
            "class folders: pass the data it was trained on"
        )


def stated_size(config: ModelConfig) -> int | None:
    """The image size the model states (--image-size, a checkpoint's, timm's), before building."""
    if config.image_size is not None:
        return config.image_size
    spec = config.model
    if is_checkpoint(spec):
        return int(read_checkpoint_meta(SHIPPED_MODELS.get(spec, spec))["image_size"])
    kind, _, name = spec.partition(":")
    if kind == "hf":
        from camlens.classifier.hf import hf_size

        return hf_size(spec)
    try:
        if kind == "timm":
            cfg = importlib.import_module("timm").get_pretrained_cfg(name)
            return int(cfg.input_size[-1]) if cfg is not None else None
        if kind == "torchvision":  # its weights' eval transform: e.g. centre crop 224
            weights = importlib.import_module("torchvision.models").get_model_weights(name)
            return int(weights.DEFAULT.transforms().crop_size[0])
    except Exception:  # the name is checked, with a clear message, when it is built
        return None
    return None


def build_classifier(
    config: ModelConfig,
    num_classes: int | None,
    device: str | torch.device = "cpu",
    describe_only: bool = False,
) -> tuple[nn.Module, dict, dict[str, str]]:
    """(model taking [0, 1] images in eval mode, a camlens checkpoint's json or {}, facts).

    `num_classes`: the data's; None (no data yet, camlens summary) takes it from the head of
    --weights where that is unambiguous, else 10. `describe_only` (camlens summary): no weights
    or normalisation needed, the layers suffice.
    """
    spec, device = config.model, torch.device(device)
    if is_checkpoint(spec):
        if config.weights is not None:
            raise CheckpointError(
                f"--weights is for FILE.py:FACTORY, timm: and torchvision: "
                f"models; {spec} is a camlens checkpoint with its own"
            )
        model, meta = load_checkpoint(spec, device)
        if config.mean is not None or config.std is not None:  # camlens normalises inside
            model.mean.copy_(torch.tensor(config.mean or meta["mean"]).view(1, 3, 1, 1))
            model.std.copy_(torch.tensor(config.std or meta["std"]).view(1, 3, 1, 1))
        return model, meta, {"model": spec}
    kind = spec.partition(":")[0]
    if kind in ARCHITECTURES and config.weights is None and not describe_only:
        raise CheckpointError(
            f"--model {spec} needs --weights FILE (.safetensors or a state dict .pt): "
            "camlens never downloads weights"
        )
    inner, stated = build_architecture(spec, num_classes or 10)
    if config.weights is not None:
        state = read_state_dict(Path(config.weights))
        if num_classes is None:
            num_classes = head_classes(inner, state)
            if num_classes is not None:
                inner, stated = build_architecture(spec, num_classes)
        hint = f"it was built for the data's {num_classes} classes: pass the data it learned"
        if describe_only:  # no data: the count is the user's or the head's
            hint = "pass the class count its head was trained for with --classes N"
        load_weights(inner, config.weights, state, hint)
    mean = config.mean or stated.get("mean") or ((0.0,) * 3 if describe_only else None)
    std = config.std or stated.get("std") or ((1.0,) * 3 if describe_only else None)
    if mean is None or std is None:
        raise CheckpointError(
            f"{spec} states no input normalisation: pass the mean and std it was trained with, "
            "e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 (--mean 0,0,0 --std 1,1,1 "
            "if it takes [0, 1] images)"
        )
    model = Classifier(inner, tuple(mean), tuple(std), config.prefix_tokens, config.tokens_grid)
    facts = {
        "model": spec,
        "weights": str(config.weights)
        if config.weights
        else ("the folder's own" if kind == "hf" else "the factory's own"),
        "normalisation": f"mean {tuple(mean)}, std {tuple(std)}",
    }
    if "crop_pct" in stated:  # the image processor's centre crop: camlens resizes instead
        facts["crop"] = f"not applied (the processor's crop_pct {stated['crop_pct']:g})"
    return model.to(device).eval(), {}, facts


def stated_eval(config: ModelConfig) -> dict:
    """What a timm: or torchvision: model states of its eval transform and classes, where its
    library is installed: {"crop_pct", "interpolation", "categories"}; {} otherwise."""
    kind, _, name = config.model.partition(":")
    try:
        if kind == "timm":
            cfg = importlib.import_module("timm").get_pretrained_cfg(name)
            return {"crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation} if cfg else {}
        if kind == "torchvision":
            weights = importlib.import_module("torchvision.models").get_model_weights(name)
            default = weights.DEFAULT
            t = default.transforms()
            return {
                "crop_pct": t.crop_size[0] / t.resize_size[0],
                "interpolation": t.interpolation.value,
                "categories": default.meta.get("categories"),
            }
    except Exception:  # no such library or name: the build says so, with a clear message
        return {}
    return {}


def open_model(
    config: ModelConfig,
    source: str | Path | Dataset,
    device: str | torch.device = "cpu",
    progress: bool = True,
    data_config: DataConfig | None = None,
) -> Opened:
    """Load `source` at the size the model takes (a `Dataset` is taken as it is), then build
    and load the model for its classes; a model that does not fit the data is a
    CheckpointError or DataError. Every command opens its model here, camlens or not.
    `data_config`: class names and eval transform (--classes, --resize, --interpolation);
    None: what a timm:/torchvision: model states, else the folders' names and crop_pct 1."""
    data_config = data_config or DataConfig()
    if is_checkpoint(config.model):  # a missing or damaged checkpoint says so first
        model, meta, facts = build_classifier(config, 0, device)
        size = config.image_size or int(meta["image_size"])
        data, prep = _data(source, size, progress, data_config, {})
    else:
        size = None if isinstance(source, Dataset) else stated_size(config) or native_size(source)
        data, prep = _data(source, size, progress, data_config, stated_eval(config))
        model, meta, facts = build_classifier(config, len(data.classes), device)
    if prep is not None:  # the pixels the model saw, as the report states them
        facts = {**facts, "preprocessing": prep.describe()}
    if meta:
        if list(data.classes) != list(meta["classes"]):
            raise DataError(
                f"{source} has classes {list(data.classes)}, but the checkpoint was trained on "
                f"{meta['classes']}: pass the data it was trained on"
            )
    else:
        _check_classes(model, data, config.model, torch.device(device))
    return Opened(model, data, meta, {**facts, "input": f"{data.image_size} px"})


def _data(
    source, size: int | None, progress: bool, config: DataConfig, stated: dict
) -> tuple[Dataset, Preprocess | None]:
    """The data and how its photos became the model's pixels (None: a `Dataset` as given)."""
    if isinstance(source, Dataset):
        return source, None
    prep = config.preprocess(size or 32, stated)
    # the model's own names (torchvision's meta["categories"]) when no file says them
    names = config.classes or stated.get("categories")
    try:
        return load_dataset(source, progress=progress, preprocess=prep, classes=names), prep
    except DataError:
        if config.classes is None and names is not None:  # not ImageNet's 1,000: the folders'
            return load_dataset(source, progress=progress, preprocess=prep), prep
        raise
