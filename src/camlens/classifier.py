"""Any image classifier as a camlens model: name it, load its weights, feed it [0, 1] images.

    --model SPEC               what it names
    shipped | shipped-layer    a bundled camlens model
    run/checkpoint.safetensors a camlens checkpoint (its .json beside it)
    path/to/file.py:factory    a callable in a Python file that returns an nn.Module
    package.module:factory     the same, from an importable module
    timm:NAME, torchvision:NAME  the architecture by name; the weights only from --weights

A factory is called with `num_classes=` (the data's class count) when it takes that argument.
`--weights` is a `.safetensors` file or a state dict in `.pt`/`.pth`, read with
`torch.load(weights_only=True)`: a pickled whole model is refused, never unpickled. Every
camlens path passes images in [0, 1]; `Classifier` normalises them with the model's mean/std
first (camlens checkpoints normalise inside the model and need no wrapper).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from camlens.data import DataError, Dataset, load_dataset
from camlens.model import SHIPPED_MODELS, CheckpointError, load_checkpoint, read_checkpoint_meta

__all__ = [
    "Classifier",
    "ModelConfig",
    "Opened",
    "build_classifier",
    "load_weights",
    "native_size",
    "open_model",
    "parse_triple",
    "stated_size",
]

ARCHITECTURES = ("timm", "torchvision")
SAVE_HOWTO = "save its weights instead: torch.save(model.state_dict(), 'weights.pt')"


@dataclass(frozen=True)
class ModelConfig:
    """How to build, load and feed a classifier: the `--model` family of flags."""

    model: str  # SPEC: a camlens checkpoint, shipped, FILE.py:factory, pkg.mod:factory, timm:NAME
    weights: Path | None = None  # .safetensors or a state dict .pt/.pth (not for camlens models)
    mean: tuple[float, float, float] | None = None  # None: the checkpoint's or timm's own
    std: tuple[float, float, float] | None = None  # the same for the standard deviation
    image_size: int | None = None  # None: what the model states, else the data's own size
    prefix_tokens: int | None = None  # ViT tokens before the grid; None: the model's, or T - h*w
    tokens_grid: tuple[int, int] | None = None  # ViT grid (h, w); None: the largest square


@dataclass(frozen=True)
class Opened:
    """A model ready for every camlens path, and the data it is evaluated on."""

    model: nn.Module  # takes (N, 3, S, S) images in [0, 1], returns (N, K) logits; eval mode
    data: Dataset  # its classes are the model's
    meta: dict  # a camlens checkpoint's json; {} for other models
    facts: dict[str, str]  # what the report's summary says of the model


class Classifier(nn.Module):
    """`model` fed [0, 1] images: (images - mean) / std first.

    `num_prefix_tokens` and `tokens_grid` tell the CAM engine how a token layer's output
    lies on the image (camlens.cam.token_grid); None leaves it to the wrapped model or T.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_prefix_tokens: int | None = None,
        tokens_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.arch = type(model).__name__  # what the report names: the model, not this wrapper
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        if num_prefix_tokens is None:
            num_prefix_tokens = getattr(model, "num_prefix_tokens", None)
        self.num_prefix_tokens = num_prefix_tokens
        self.tokens_grid = tokens_grid or getattr(model, "tokens_grid", None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def parse_triple(text: str, flag: str) -> tuple[float, float, float]:
    """`0.485,0.456,0.406` -> three floats; anything else is a one-line error naming `flag`."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"{flag} takes three numbers, R,G,B (e.g. 0.485,0.456,0.406), got {text}")
    return values  # type: ignore[return-value]


def _is_checkpoint(spec: str) -> bool:
    if spec in SHIPPED_MODELS:
        return True
    head, sep, _ = spec.rpartition(":")
    return not sep or not head or (len(head) == 1 and head.isalpha())  # C:\... is a path


def native_size(source: str | Path) -> int:
    """The side of the first test image of an image folder; 32 for anything else."""
    test = Path(source) / "test"
    if test.is_dir():
        for cls in sorted(test.iterdir()):
            for path in sorted(cls.iterdir()) if cls.is_dir() else []:
                if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                    with Image.open(path) as img:
                        return max(img.size)  # the loader makes it square at this side
    return 32


def _factory(spec: str) -> Any:
    """The callable `spec` names (FILE.py:NAME or package.module:NAME)."""
    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise CheckpointError(f"model file {path} not found: --model takes FILE.py:FACTORY")
        module_name = f"camlens_user_{path.stem}"
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)  # type: ignore[arg-type]
        sys.modules[module_name] = module  # dataclasses and pickle-free copies look it up
        try:
            loader.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as e:
            raise CheckpointError(f"{path} failed to import: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise CheckpointError(
                f"cannot import {where!r} ({e}): --model takes FILE.py:FACTORY or "
                "package.module:FACTORY"
            ) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise CheckpointError(f"{where} has no callable {name!r}: name the function that "
                              "returns the model")
    return factory


def _build(spec: str, num_classes: int) -> tuple[nn.Module, dict]:
    """The architecture (random or factory weights) and what its library states of it."""
    kind, _, name = spec.partition(":")
    if kind in ARCHITECTURES:
        try:
            library = importlib.import_module(kind)
        except ImportError as e:
            raise CheckpointError(
                f"--model {spec} needs {kind}, which does not import: {e}"
            ) from None
        try:
            if kind == "timm":
                model = library.create_model(name, pretrained=False, num_classes=num_classes)
                cfg = dict(getattr(model, "pretrained_cfg", None) or {})
            else:
                model = library.models.get_model(name, weights=None, num_classes=num_classes)
                cfg = {}
        except Exception as e:  # the library's own "unknown model" errors
            raise CheckpointError(f"{kind} cannot build {name!r}: {e}") from None
        return model, cfg
    factory = _factory(spec)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "num_classes" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    try:
        model = factory(num_classes=num_classes) if takes else factory()
    except Exception as e:
        raise CheckpointError(f"{spec} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
    return model, {}


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"cannot read {path}: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds a pickled object, not a state dict, and camlens unpickles nothing: "
            f"{SAVE_HOWTO}"
        ) from None
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):  # common training wrappers
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors: {SAVE_HOWTO}")
    return state


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict into `model`; keys or shapes that differ are named in the error."""
    state = _state_dict(Path(path))
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(v.shape)} (model {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{what} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape of", wrong))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


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
    if _is_checkpoint(spec):
        return int(read_checkpoint_meta(SHIPPED_MODELS.get(spec, spec))["image_size"])
    kind, _, name = spec.partition(":")
    if kind == "timm":
        try:
            cfg = importlib.import_module("timm").get_pretrained_cfg(name)
            return int(cfg.input_size[-1]) if cfg is not None else None
        except Exception:  # the name is checked, with a clear message, when it is built
            return None
    return None


def build_classifier(
    config: ModelConfig,
    num_classes: int,
    device: str | torch.device = "cpu",
    describe_only: bool = False,
) -> tuple[nn.Module, dict, dict[str, str]]:
    """(model taking [0, 1] images in eval mode, a camlens checkpoint's json or {}, facts).

    `describe_only` (camlens summary): no weights or normalisation needed, the layers suffice.
    """
    spec, device = config.model, torch.device(device)
    if _is_checkpoint(spec):
        if config.weights is not None:
            raise CheckpointError(f"--weights is for FILE.py:FACTORY, timm: and torchvision: "
                                  f"models; {spec} is a camlens checkpoint with its own")
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
    inner, stated = _build(spec, num_classes)
    if config.weights is not None:
        load_weights(inner, config.weights)
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
        "weights": str(config.weights) if config.weights else "the factory's own",
        "normalisation": f"mean {tuple(mean)}, std {tuple(std)}",
    }
    return model.to(device).eval(), {}, facts


def open_model(
    config: ModelConfig,
    source: str | Path,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Opened:
    """Load `source` at the size the model takes, then build and load the model for its
    classes; a model that does not fit the data is a CheckpointError or DataError."""
    if _is_checkpoint(config.model):  # a missing or damaged checkpoint says so first
        model, meta, facts = build_classifier(config, 0, device)
        size = config.image_size or int(meta["image_size"])
        data = load_dataset(source, image_size=size, progress=progress)
    else:
        size = stated_size(config) or native_size(source)
        data = load_dataset(source, image_size=size, progress=progress)
        model, meta, facts = build_classifier(config, len(data.classes), device)
    if meta:
        if list(data.classes) != list(meta["classes"]):
            raise DataError(
                f"{source} has classes {list(data.classes)}, but the checkpoint was trained on "
                f"{meta['classes']}: pass the data it was trained on"
            )
    else:
        _check_classes(model, data, config.model, torch.device(device))
    return Opened(model, data, meta, {**facts, "input": f"{data.image_size} px"})
