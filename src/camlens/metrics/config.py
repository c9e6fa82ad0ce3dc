"""`MetricConfig`: every knob of the faithfulness metrics, one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REPLACEMENTS", "MetricConfig"]

REPLACEMENTS = ("rise", "blur", "mean", "zeros")


@dataclass(frozen=True)
class MetricConfig:
    """Knobs of `score_maps` and the metric functions; each reads the ones it needs."""

    # perturbed images per forward pass: memory is about batch_size images plus activations
    batch_size: int = 256
    # deletion/insertion: K steps; step k removes (reveals) floor(k * H * W / K) pixels, so no
    # step moves more than ceil(H * W / K) pixels and the curve has K + 1 points from 0 %
    steps: int = 16
    # what a removed pixel becomes: "rise" (RISE's substrates: deletion to the model's zero
    # input, i.e. its mean colour; insertion from blur), "blur" (both ways: deletion to blur is
    # not RISE's and scores differ by up to 0.41 per image), "mean" (per-channel image mean),
    # "zeros" (black in image units)
    replacement: str = "rise"
    # the colour RISE deletes to, image units per channel; None: the model's own `mean` buffer
    # (zero after its normalisation) where it has one, else 0 (a model fed raw [0, 1] images)
    substrate: tuple[float, ...] | None = None
    # the blur: Gaussian kernel side and sigma in pixels (RISE's 11 and 5), replicate padding
    blur_kernel: int = 11
    blur_sigma: float = 5.0
    # ROAD: fractions of the pixels removed, most relevant first (MoRF) and least (LeRF)
    road_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    # ROAD: std of the Gaussian noise on imputed pixels, image units in [0, 1] (paper: 0.01)
    road_noise: float = 0.01
    # ROAD: conjugate gradient stops at this relative residual, or after road_max_iter steps
    road_tol: float = 1e-5
    road_max_iter: int = 2000
    # ARCC's ROAD term: the fractions its authors used (pytorch-grad-cam percentiles 20..80)
    arcc_fractions: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    # seed of the generator used when none is passed (ROAD noise)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.replacement not in REPLACEMENTS:
            raise ValueError(
                f"unknown replacement {self.replacement!r}: choose one of {', '.join(REPLACEMENTS)}"
            )
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0 or self.blur_sigma <= 0:
            raise ValueError(
                f"blur_kernel must be odd and >= 1 and blur_sigma > 0, "
                f"got {self.blur_kernel} and {self.blur_sigma}"
            )
        for name in ("road_fractions", "arcc_fractions"):
            fractions = getattr(self, name)
            if not fractions or not all(0 < f < 1 for f in fractions):
                raise ValueError(
                    f"{name} must be fractions strictly between 0 and 1, got {fractions}"
                )
        if self.road_noise < 0 or self.road_tol <= 0 or self.road_max_iter < 1:
            raise ValueError("road_noise must be >= 0, road_tol > 0 and road_max_iter >= 1")
