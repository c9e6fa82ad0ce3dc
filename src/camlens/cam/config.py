"""`CamConfig`, what the engine reads for every method, and each method's own knobs.

`normalize`, `precision`, `batch_size` and `layout` are the engine's, for every method. The
methods with knobs of their own (Score-CAM's channel cap, SmoothGrad-CAM++'s noise, ...) each
read one small frozen dataclass, a `Knobs`: the method that reads it is its `method`, and
`CamConfig.knobs` holds the knobs of the one method an engine runs. An engine given another
method's knobs refuses them in one line, so that no knob is silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from camlens.cam.layout import LAYOUTS
from camlens.cam.normalize import NORMALIZE

__all__ = [
    "KNOBS",
    "KPCA_KERNELS",
    "PRECISIONS",
    "AblationKnobs",
    "CamConfig",
    "FinerKnobs",
    "ISKnobs",
    "KPCAKnobs",
    "Knobs",
    "SSKnobs",
    "ScoreKnobs",
    "SmoothKnobs",
]

# autocast dtype of each precision; fp32 runs as called
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

# KPCA-CAM's kernels of x, y (rows of centred activations), scikit-learn's definitions:
# linear x.y, poly (gamma x.y + coef0)^degree, rbf exp(-gamma |x - y|^2), sigmoid
# tanh(gamma x.y + coef0)
KPCA_KERNELS = ("sigmoid", "rbf", "poly", "linear")

# method name -> the Knobs class it reads, for the methods with knobs of their own: each Knobs
# class puts itself here when it is defined (`Knobs.__init_subclass__`)
KNOBS: dict[str, type[Knobs]] = {}


def _choose(name: str, value: object, words) -> None:
    if value not in words:
        raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(words)}")


@dataclass(frozen=True)
class Knobs:
    """One method's own knobs. Each number's lowest value is in `lowest` (None, where a field
    allows it: the rule its comment states)."""

    method: ClassVar[str] = ""  # the one method that reads these
    lowest: ClassVar[dict[str, float]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        KNOBS[cls.method] = cls

    def __post_init__(self) -> None:
        for name, low in self.lowest.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{self.method}'s {name} must be >= {low}, got {value}")


@dataclass(frozen=True)
class ScoreKnobs(Knobs):
    """Score-CAM's."""

    method: ClassVar[str] = "scorecam"
    lowest: ClassVar[dict[str, float]] = {"batch": 1, "top_k": 1}
    batch: int = 64  # masked images per forward pass
    # keep only the k highest-variance channels per image (Faster Score-CAM); None: all
    top_k: int | None = None


@dataclass(frozen=True)
class SSKnobs(ScoreKnobs):
    """SS-CAM's: Score-CAM's, and noisy masks."""

    method: ClassVar[str] = "sscam"
    lowest: ClassVar[dict[str, float]] = {**ScoreKnobs.lowest, "samples": 1, "std": 0}
    # noisy masks per channel: the paper reports N = 10 (torchcam: 35)
    samples: int = 10
    # std of the noise added to each channel min-max scaled to [0, 1], at the layer's
    # resolution; torchcam's 2.0 (per input pixel) leaves the shipped model's maps flat
    std: float = 0.5
    seed: int = 0  # of the mask noise, so that the same images always get the same maps


@dataclass(frozen=True)
class ISKnobs(ScoreKnobs):
    """IS-CAM's: Score-CAM's, and the steps of its path."""

    method: ClassVar[str] = "iscam"
    lowest: ClassVar[dict[str, float]] = {**ScoreKnobs.lowest, "samples": 1}
    # steps on the path from the zero image to the masked one (torchcam's IS-CAM takes 10)
    samples: int = 10


@dataclass(frozen=True)
class AblationKnobs(Knobs):
    """Ablation-CAM's."""

    method: ClassVar[str] = "ablationcam"
    lowest: ClassVar[dict[str, float]] = {"batch": 1}
    batch: int = 64  # ablated images per forward pass


@dataclass(frozen=True)
class SmoothKnobs(Knobs):
    """SmoothGrad-CAM++'s."""

    method: ClassVar[str] = "smoothgradcam++"
    lowest: ClassVar[dict[str, float]] = {"samples": 1, "std": 0}
    samples: int = 4  # noisy copies of each image, in the same forward pass as the image
    # noise std on [0, 1] images; torchcam's 0.3 on normalised inputs times CIFAR-10's pixel
    # std (~0.25)
    std: float = 0.075
    seed: int = 0  # of the noise, so that the same images always get the same maps


@dataclass(frozen=True)
class FinerKnobs(Knobs):
    """Finer-CAM's."""

    method: ClassVar[str] = "finercam"
    lowest: ClassVar[dict[str, float]] = {"k": 1, "gamma": 0}
    k: int = 3  # the classes nearest the explained one (by logit) that it is compared with
    gamma: float = 0.6  # strength g in y_c - g sum_j w_j y_j; the authors' "aggregate" 0.6


@dataclass(frozen=True)
class KPCAKnobs(Knobs):
    """KPCA-CAM's kernel PCA, scikit-learn's defaults but the kernel."""

    method: ClassVar[str] = "kpcacam"
    lowest: ClassVar[dict[str, float]] = {"degree": 1}
    kernel: str = "sigmoid"  # one of KPCA_KERNELS (pytorch-grad-cam's "sigmoid")
    gamma: float | None = None  # of the sigmoid, rbf and poly kernels; None: 1 / channels
    coef0: float = 1.0  # of the sigmoid and poly kernels
    degree: int = 3  # of the poly kernel

    def __post_init__(self) -> None:
        super().__post_init__()
        _choose("kpcacam's kernel", self.kernel, KPCA_KERNELS)
        if self.gamma is not None and self.gamma <= 0:
            raise ValueError(f"kpcacam's gamma must be > 0 or None, got {self.gamma}")


@dataclass(frozen=True)
class CamConfig:
    """What the engine reads for every method, and the one method's own `knobs`."""

    # "minmax" per map, "none" raw; "batch" one scale per call, "pair" one per image across sets,
    # both raw / shared max so that a weak map looks weak (see normalize.py)
    normalize: str = "minmax"
    # the forward pass's precision: "fp32" (as called), or "bf16" / "fp16" autocast; maps are
    # combined in float32 either way
    precision: str = "fp32"
    # images per forward pass; None: the whole input at once (eval mode makes chunking exact)
    batch_size: int | None = None
    # the hooked layers' layout: "auto" (read from each output and the model), or forced to
    # "nchw" (N, C, h, w), "nhwc" (N, h, w, C) or "tokens" (N, T, C) (camlens.cam.layout)
    layout: str = "auto"
    # the method's own knobs, of the Knobs class it reads (KNOBS); None: its defaults
    knobs: Knobs | None = None

    def __post_init__(self) -> None:
        _choose("normalize", self.normalize, NORMALIZE)
        _choose("precision", self.precision, PRECISIONS)
        _choose("layout", self.layout, LAYOUTS)
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")
