"""What `--model SPEC` names, built: the architecture, and the wrapper that feeds it [0, 1].

`build_architecture` builds FILE.py:FACTORY, package.module:FACTORY, timm:NAME and
torchvision:NAME (random or the factory's own weights); `Classifier` normalises the images
with the model's mean/std before calling it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from camlens.data.load import first_image
from camlens.model import SHIPPED_MODELS, CheckpointError

__all__ = [
    "ARCHITECTURES",
    "Classifier",
    "ModelConfig",
    "build_architecture",
    "is_checkpoint",
    "model_logits",
    "parameters_of",
    "native_size",
    "parse_triple",
]

ARCHITECTURES = ("timm", "torchvision")


@dataclass(frozen=True)
class ModelConfig:
    """How to build, load and feed a classifier: the `--model` family of flags."""

    # SPEC: a camlens checkpoint, shipped, FILE.py:factory, pkg.mod:factory, timm:NAME,
    # torchvision:NAME, hf:PATH (a Hugging Face folder)
    model: str
    weights: Path | None = None  # .safetensors or a state dict .pt/.pth (not for camlens models)
    mean: tuple[float, float, float] | None = None  # None: the checkpoint's or timm's own
    std: tuple[float, float, float] | None = None  # the same for the standard deviation
    image_size: int | None = None  # None: what the model states, else the data's own size
    prefix_tokens: int | None = None  # ViT tokens before the grid; None: the model's, or T - h*w
    tokens_grid: tuple[int, int] | None = None  # ViT grid (h, w); None: the largest square


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

        # a Hugging Face model takes `pixel_values=`; its output's `.logits` are the logits
        self.keyword = "pixel_values" in parameters_of(model.forward)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        return model_logits(self.model(pixel_values=x) if self.keyword else self.model(x))


def model_logits(output: Any) -> torch.Tensor:
    """(N, K) logits from a forward's tensor, tuple (first), dict or ModelOutput (`.logits`).
    camlens.cam.logits_of reads the same for the engines, which import nothing of camlens."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits", next(iter(output.values()), None))
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model must return (N, K) logits, got {type(output).__name__}")
    return logits


def parameters_of(function: Any) -> dict:
    """A callable's parameters by name; {} where Python cannot read its signature."""
    try:
        return dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return {}


def parse_triple(text: str, flag: str) -> tuple[float, float, float]:
    """`0.485,0.456,0.406` -> three floats; anything else is a one-line error naming `flag`."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"{flag} takes three numbers, R,G,B (e.g. 0.485,0.456,0.406), got {text}")
    return values  # type: ignore[return-value]


def is_checkpoint(spec: str) -> bool:
    if spec in SHIPPED_MODELS:
        return True
    head, sep, _ = spec.rpartition(":")
    return not sep or not head or (len(head) == 1 and head.isalpha())  # C:\... is a path


def native_size(source: str | Path) -> int:
    """The side of the first image of an image folder's evaluated split; 32 for anything else."""
    path = first_image(Path(source))
    if path is None:
        return 32
    with Image.open(path) as img:
        return min(img.size)  # the loader keeps the short side at this size and crops it


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
        sys.modules[module_name] = module  # dataclasses in the file look their module up here
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
        raise CheckpointError(
            f"{where} has no callable {name!r}: name the function that returns the model"
        )
    return factory


def build_architecture(spec: str, num_classes: int) -> tuple[nn.Module, dict]:
    """The architecture (random or factory weights) and what its library states of it."""
    kind, _, name = spec.partition(":")
    if kind == "hf":
        from camlens.classifier.hf import load_hf

        return load_hf(spec)
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
                cfg = _torchvision_norm(library.models, name)
        except Exception as e:  # the library's own "unknown model" errors
            raise CheckpointError(f"{kind} cannot build {name!r}: {e}") from None
        return model, cfg
    factory = _factory(spec)
    params = parameters_of(factory)
    takes = "num_classes" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    try:
        model = factory(num_classes=num_classes) if takes else factory()
    except Exception as e:
        raise CheckpointError(f"{spec} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
    return model, {}


def _torchvision_norm(models, name: str) -> dict:
    """The mean and std of a torchvision model's weights' eval transform (their metadata: no
    download); {} where it has no weights enum."""
    try:
        t = models.get_model_weights(name).DEFAULT.transforms()
    except Exception:
        return {}
    return {"mean": tuple(t.mean), "std": tuple(t.std)}
