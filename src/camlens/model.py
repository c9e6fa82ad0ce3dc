"""The CIFAR ResNet18, its normalisation choices, and checkpoints on disk.

One model class serves every norm (the seed project kept a copy per norm). The model takes
`images` in [0, 1] and normalises them itself with the train split's mean/std, held as buffers,
so that a checkpoint carries its own preprocessing and CAM code can feed it plain images.

A checkpoint is `NAME.safetensors` (weights, no pickle) plus `NAME.json` (everything needed to
rebuild and describe the model). Both are written atomically and synced, as one pair.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from camlens.atomic import atomic_write_files
from camlens.choices import NORMS

__all__ = [
    "NORMS",
    "SHIPPED_MODEL",
    "SHIPPED_MODELS",
    "BasicBlock",
    "ResNet18",
    "layer_names",
    "summary",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "CheckpointError",
]

# the models camlens ships, by the name `--checkpoint` takes: trained by `camlens train` on
# CIFAR-10 (JPEG q75), fp16 weights; "shipped" is batch norm, "shipped-layer" layer norm
_ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_MODELS = {
    "shipped": _ASSETS / "resnet18-cifar10-jpeg",
    "shipped-layer": _ASSETS / "resnet18-layernorm-cifar10-jpeg",
}
SHIPPED_MODEL = SHIPPED_MODELS["shipped"]
ARCH = "resnet18"
FORMAT = "camlens-checkpoint/1"


def make_norm(norm: str, channels: int) -> nn.Module:
    """`layer` is GroupNorm with one group, as the seed's resnet_layerNorm.py used."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm == "group":
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual; a 1x1 projection where shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                make_norm(norm, channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet18: 3x3 stem, no max-pool, four stages of two BasicBlocks, GAP, linear.

    `width` scales every stage (64 gives the standard 11,173,962 parameters for 10 classes);
    tests use a narrow one to stay fast. `zero_init_residual` starts each block's last norm at
    zero scale, so every block begins as the identity (Goyal et al. 2017): short runs at a high
    learning rate no longer diverge in their first steps.
    """

    def __init__(
        self,
        num_classes: int = 10,
        norm: str = "batch",
        width: int = 64,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
        self.norm, self.width, self.num_classes = norm, width, num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        stages, in_channels = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            channels = width * 2**i
            stages.append(
                nn.Sequential(
                    BasicBlock(in_channels, channels, stride, norm),
                    BasicBlock(channels, channels, 1, norm),
                )
            )
            in_channels = channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_channels, num_classes)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (N, C, h, w) -> (N, C)
        return self.linear(x)


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule, in definition order (what `layer=` accepts)."""
    return [name for name, _ in model.named_modules() if name]


def summary(model: nn.Module, image_size: int = 32) -> str:
    """A torchsummary-style table: layer name, type, output shape, parameters."""
    rows: list[tuple[str, str, str, int]] = []

    def record(name: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else "?"
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append((name, type(module).__name__, str(list(shape)), params))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    name_w = max(len(r[0]) for r in rows) + 2
    lines = [f"{'layer':<{name_w}}{'type':<14}{'output shape':<20}{'params':>12}"]
    lines.append("-" * len(lines[0]))
    lines += [f"{n:<{name_w}}{t:<14}{s:<20}{p:>12,}" for n, t, s, p in rows]
    lines.append("-" * len(lines[0]))
    lines.append(f"total parameters: {total:,} (trainable {trainable:,})")
    return "\n".join(lines)


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or for another model."""


def save_checkpoint(
    model: ResNet18, path: str | Path, meta: dict[str, Any], dtype: torch.dtype = torch.float32
) -> Path:
    """Write `path`.safetensors and `path`.json; `meta` must hold at least `classes`.

    The json's `epoch` is also stored in the safetensors header, so that a pair from two
    different epochs is detected on load.
    """
    stem = Path(path).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "arch": ARCH,
        "norm": model.norm,
        "width": model.width,
        "num_classes": model.num_classes,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        **meta,
    }
    state = model.state_dict()
    tensors = {
        k: (v.to(dtype) if v.is_floating_point() and k not in ("mean", "std") else v)
        .detach()
        .cpu()
        .contiguous()
        for k, v in state.items()
    }
    stamp = {"format": FORMAT, "epoch": str(meta.get("epoch", ""))}
    text = json.dumps(meta, indent=2, sort_keys=False) + "\n"
    # both written before either is renamed: a full disk leaves the old pair whole
    atomic_write_files(
        {
            stem.with_suffix(".safetensors"): save(tensors, metadata=stamp),
            stem.with_suffix(".json"): text.encode(),
        }
    )
    return stem.with_suffix(".safetensors")


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The json half of a checkpoint, given either file of the pair (or the stem)."""
    stem = (
        Path(path).with_suffix("") if Path(path).suffix in (".json", ".safetensors") else Path(path)
    )
    meta_path = stem.with_suffix(".json")
    if not meta_path.is_file():
        raise CheckpointError(
            f"checkpoint metadata {meta_path} not found: pass the .safetensors file that "
            "`camlens train` wrote beside its .json"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint metadata {meta_path} is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{meta_path} is not a camlens checkpoint (format {meta.get('format')!r})"
        )
    return meta


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[ResNet18, dict[str, Any]]:
    """Rebuild the model from a checkpoint (weights cast to fp32, eval mode) and its metadata.

    `path` is either file of the pair, their common stem, or a bundled model's name
    ("shipped": batch norm, "shipped-layer": layer norm; see SHIPPED_MODELS).
    """
    path = SHIPPED_MODELS.get(str(path), path)
    stem = (
        Path(path).with_suffix("") if Path(path).suffix in (".json", ".safetensors") else Path(path)
    )
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {weights} not found")
    meta = read_checkpoint_meta(stem)
    if meta.get("arch", ARCH) != ARCH:
        raise CheckpointError(f"checkpoint is for architecture {meta.get('arch')!r}, not {ARCH}")
    width = int(meta.get("width", 64))
    model = ResNet18(len(meta["classes"]), meta["norm"], width, meta["mean"], meta["std"])
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"cannot read {weights}: {e}") from None
    with safe_open(str(weights), "pt") as f:
        stamp = f.metadata() or {}
    if stamp.get("epoch", "") != str(meta.get("epoch", "")):
        raise CheckpointError(
            f"{weights} (epoch {stamp.get('epoch')!r}) and its .json (epoch {meta.get('epoch')!r}) "
            "come from different saves: copy both files of the pair together"
        )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match a {meta['norm']}-norm ResNet18 "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"{weights}: {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    return model.to(device).eval(), meta
