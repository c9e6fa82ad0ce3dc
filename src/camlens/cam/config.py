"""`CamConfig`: every method's knobs, one frozen dataclass; each method declares those it reads.

`normalize`, `precision` and `batch_size` are read by the engine for every method
(`SHARED_KNOBS`); the others belong to the methods whose `knobs` name them, and an engine given
one it does not read (changed from its default) refuses it, so that no knob is silently ignored.
A caller that hands one config to several methods passes `config.for_method(name)`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from camlens.cam.layout import LAYOUTS
from camlens.cam.normalize import NORMALIZE

__all__ = ["KNOBS", "KPCA_KERNELS", "PRECISIONS", "SHARED_KNOBS", "CamConfig"]

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

# the knobs the engine reads for every method
SHARED_KNOBS = frozenset({"normalize", "precision", "batch_size", "layout"})
# method name -> the knobs it reads beyond SHARED_KNOBS: each engine class puts its own here
# when it is defined (`Engine.__init_subclass__`), so this module and the engine's check read
# them without importing the package that lists the methods (METHODS)
KNOBS: dict[str, frozenset[str]] = {}


# the lowest value of each numeric knob
_LOWEST = {
    "batch_size": 1,
    "score_batch": 1,
    "top_k": 1,
    "smooth_samples": 1,
    "smooth_std": 0,
    "finer_k": 1,
    "finer_gamma": 0,
    "score_samples": 1,
    "score_std": 0,
    "kpca_degree": 1,
}


@dataclass(frozen=True)
class CamConfig:
    """Every method's knobs; the engine reads `SHARED_KNOBS`, each method its own `knobs`."""

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
    # Score-CAM: masked images per forward pass
    score_batch: int = 64
    # Score-CAM: keep only the k highest-variance channels per image (Faster Score-CAM); None: all
    top_k: int | None = None
    # SmoothGrad-CAM++: noisy copies of each image, in the same forward pass as the image
    smooth_samples: int = 4
    # SmoothGrad-CAM++: noise std on [0, 1] images; torchcam's 0.3 on normalised inputs times
    # CIFAR-10's pixel std (~0.25)
    smooth_std: float = 0.075
    # SmoothGrad-CAM++: seed of the noise, so that the same images always get the same maps
    smooth_seed: int = 0
    # Finer-CAM: the k classes nearest the explained one (by logit) that it is compared with
    finer_k: int = 3
    # Finer-CAM: comparison strength g in y_c - g sum_j w_j y_j; the authors' "aggregate" 0.6
    finer_gamma: float = 0.6
    # SS-CAM: noisy masks per channel; IS-CAM: steps on the path from the zero image to the
    # masked one. SS-CAM's paper reports N = 10 (torchcam: 35); torchcam's IS-CAM takes 10
    score_samples: int = 10
    # SS-CAM: std of the noise added to each channel min-max scaled to [0, 1], at the layer's
    # resolution; torchcam's 2.0 (per input pixel) leaves the shipped model's maps flat
    score_std: float = 0.5
    # SS-CAM: seed of the mask noise, so that the same images always get the same maps
    score_seed: int = 0
    # KPCA-CAM: kernel of the kernel PCA, one of KPCA_KERNELS (pytorch-grad-cam's "sigmoid")
    kpca_kernel: str = "sigmoid"
    # KPCA-CAM: gamma of the sigmoid, rbf and poly kernels; None: 1 / channels (scikit-learn's)
    kpca_gamma: float | None = None
    # KPCA-CAM: coef0 of the sigmoid and poly kernels (scikit-learn's 1.0)
    kpca_coef0: float = 1.0
    # KPCA-CAM: degree of the poly kernel (scikit-learn's 3)
    kpca_degree: int = 3

    def __post_init__(self) -> None:
        # the words each takes, then the lowest value of each number (None: the default rule)
        for name, words in (
            ("normalize", NORMALIZE),
            ("precision", PRECISIONS),
            ("layout", LAYOUTS),
            ("kpca_kernel", KPCA_KERNELS),
        ):
            if getattr(self, name) not in words:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}: choose one of {', '.join(words)}"
                )
        for name, low in _LOWEST.items():
            value = getattr(self, name)
            if value is not None and value < low:
                none = " or None" if name in ("batch_size", "top_k", "kpca_gamma") else ""
                raise ValueError(f"{name} must be >= {low}{none}, got {value}")
        if self.kpca_gamma is not None and self.kpca_gamma <= 0:
            raise ValueError(f"kpca_gamma must be > 0 or None, got {self.kpca_gamma}")

    def changed(self) -> dict[str, Any]:
        """The knobs that differ from their defaults, by name."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != f.default
        }

    def for_method(self, method: str) -> CamConfig:
        """This config with the knobs `method` (a METHODS name) does not read back at their
        defaults: what a caller that hands one config to several methods passes to each."""
        if method not in KNOBS:
            raise KeyError(f"unknown CAM method {method!r}: choose one of {', '.join(KNOBS)}")
        reads = SHARED_KNOBS | KNOBS[method]
        defaults = {f.name: f.default for f in fields(self) if f.name not in reads}
        return replace(self, **defaults)
