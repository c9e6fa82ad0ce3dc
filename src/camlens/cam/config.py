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

__all__ = ["KPCA_KERNELS", "PRECISIONS", "SHARED_KNOBS", "CamConfig"]

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
        if self.normalize not in NORMALIZE:
            raise ValueError(
                f"unknown normalize {self.normalize!r}: choose one of {', '.join(NORMALIZE)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}: choose one of {', '.join(LAYOUTS)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")
        if self.score_batch < 1:
            raise ValueError(f"score_batch must be >= 1, got {self.score_batch}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.smooth_samples < 1:
            raise ValueError(f"smooth_samples must be >= 1, got {self.smooth_samples}")
        if self.smooth_std < 0:
            raise ValueError(f"smooth_std must be >= 0, got {self.smooth_std}")
        if self.finer_k < 1:
            raise ValueError(f"finer_k must be >= 1, got {self.finer_k}")
        if self.finer_gamma < 0:
            raise ValueError(f"finer_gamma must be >= 0, got {self.finer_gamma}")
        if self.score_samples < 1:
            raise ValueError(f"score_samples must be >= 1, got {self.score_samples}")
        if self.score_std < 0:
            raise ValueError(f"score_std must be >= 0, got {self.score_std}")
        if self.kpca_kernel not in KPCA_KERNELS:
            raise ValueError(
                f"unknown kpca_kernel {self.kpca_kernel!r}: choose one of {', '.join(KPCA_KERNELS)}"
            )
        if self.kpca_gamma is not None and self.kpca_gamma <= 0:
            raise ValueError(f"kpca_gamma must be > 0 or None, got {self.kpca_gamma}")
        if self.kpca_degree < 1:
            raise ValueError(f"kpca_degree must be >= 1, got {self.kpca_degree}")

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
        from camlens.cam import METHODS  # the package imports this module first

        if method not in METHODS:
            raise KeyError(f"unknown CAM method {method!r}: choose one of {', '.join(METHODS)}")
        reads = SHARED_KNOBS | METHODS[method].knobs
        defaults = {f.name: f.default for f in fields(self) if f.name not in reads}
        return replace(self, **defaults)
