"""The normalisation a user's data carries, read from its torchvision-style transform.

Duck-typed, so camlens never imports torchvision: a `Normalize` is anything holding `.mean`
and `.std` values, found in a `Compose`, an `nn.Sequential`, or the datasets a dataset wraps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from camlens.data.sources import DataError

__all__ = ["dataset_normalization", "read_normalization", "rounded", "triple"]


def read_normalization(
    transform: Any,
) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """(mean, std) of the last `Normalize` in a torchvision-style transform, else None.

    Duck-typed: a transform with `.mean` and `.std` values, or one holding such, nested: in
    `.transforms` (a `Compose`, v1 or v2) or as its modules (an `nn.Sequential`, which
    torchvision suggests for scripting); a single value stands for all three channels.
    """
    found = None
    stack = [transform]
    while stack:
        t = stack.pop(0)
        if t is None:
            continue
        # a tensor has .mean() and .std() too: a Normalize holds values, not methods
        if hasattr(t, "mean") and hasattr(t, "std") and not callable(t.mean):
            found = (triple(t.mean), triple(t.std))
        inner = getattr(t, "transforms", None)
        if isinstance(inner, (list, tuple, nn.ModuleList)):
            stack[:0] = list(inner)
        elif isinstance(t, nn.Module):
            stack[:0] = list(t.children())
    return found


def dataset_normalization(
    data: Any,
) -> tuple[tuple[float, float, float], tuple[float, float, float], str] | None:
    """(mean, std, where) of the `Normalize` a torch dataset applies itself, else None.

    Looked for in each dataset `data` wraps, from the outside in, as its items pass through
    them: its `transform`, then its `transforms` (a VisionDataset built with `transforms=`),
    then the dataset inside (a `Subset`'s, a wrapper's `.dataset`), or those joined in a
    `ConcatDataset` (which must agree). `where` names it: "CIFAR10.transform".
    """
    for _ in range(8):  # a dataset wrapping itself must not hang the call
        for name in ("transform", "transforms"):
            found = read_normalization(getattr(data, name, None))
            if found is not None:
                return (*found, f"{type(data).__name__}.{name}")
        parts = getattr(data, "datasets", None)
        if isinstance(parts, (list, tuple)) and parts:
            each = [dataset_normalization(part) for part in parts]
            if len({None if f is None else f[:2] for f in each}) > 1:
                raise DataError(
                    f"the {len(parts)} datasets joined in the {type(data).__name__} are "
                    "normalised differently: join test datasets built with one transform"
                )
            return each[0]
        data = getattr(data, "dataset", None)
        if data is None:
            return None
    return None


def rounded(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def triple(values: Any) -> tuple[float, float, float]:
    flat = [float(v) for v in np.asarray(values, dtype=float).reshape(-1)]
    if len(flat) == 1:
        flat *= 3
    if len(flat) != 3:
        raise DataError(f"mean/std need 1 or 3 values (R, G, B), got {len(flat)}")
    return (flat[0], flat[1], flat[2])
