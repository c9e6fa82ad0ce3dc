"""camlens's precision policy for maps, metrics and the counterfactual, stated in one place.

- **TF32 off** inside every CAM, metric and counterfactual computation (`full_fp32`), restored
  on the way out. PyTorch runs CUDA convolutions in TF32 by default (a 10-bit mantissa on the
  inputs and weights): emulated on the CPU (tests/rounding, CAMLENS_TEST_ROUNDING=tf32), that
  moved the shipped model's layer3 Grad-CAM maps by more than 0.01 on a quarter of the images
  and by up to 1.0 on weak maps, which min-max normalisation magnifies (docs/performance.md).
  Training keeps the caller's setting: its result is the weights, not one map.
- **fp16 refused** for maps (`check_precision`): the gradients of weak maps (1e-6 to 1e-4)
  fall into fp16's subnormal range without loss scaling. bf16 has fp32's exponent range.
- **bf16 where asked**: the CAM forward pass under bf16 autocast, maps combined in fp32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["FP16_REFUSED", "check_precision", "full_fp32"]

FP16_REFUSED = (
    "fp16 maps are refused: the gradients of weak maps (1e-6 to 1e-4) underflow fp16 without "
    "loss scaling; use --cam-precision bf16 (fp32's range) or fp32"
)


def check_precision(precision: str) -> None:
    """One line for a precision maps are not made in (fp16); the rest pass."""
    if precision == "fp16":
        raise ValueError(FP16_REFUSED)


@contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN convolutions inside the block; the caller's flags
    restored after, also on an error. A no-op on the CPU, where fp32 is fp32."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
