"""`untouched(model)`: whatever runs inside leaves the training run as it found it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

__all__ = ["untouched"]


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Restore, on the way out, every module's train/eval flag, the parameters' gradients and
    `requires_grad`, and the RNG states (torch, CUDA where initialised, numpy, Python's).

    A training loop that calls into camlens between `backward()` and `step()`, or that draws
    its next shuffle right after, goes on exactly as without the call. Gradients are set
    aside (None) while inside, so nothing inside can add to them.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    grads = [p.grad for p in params]
    flags = [p.requires_grad for p in params]
    cpu_rng, np_rng, py_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, grad, flag in zip(params, grads, flags, strict=True):
            p.grad = grad
            p.requires_grad_(flag)
        torch.set_rng_state(cpu_rng)
        np.random.set_state(np_rng)
        random.setstate(py_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
