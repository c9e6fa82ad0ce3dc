"""camlens 0.1's older names, kept working for a while with a DeprecationWarning.

A map of (N, H, W) was called a `cam` in some names and a `map` in others; it is now a map
everywhere. "explain" names what makes maps, so the counterfactual test of the mistakes, which
makes none, is `mistake_counterfactual`. In cam/ because cam imports nothing else of camlens;
explain, epochs and diff use it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["RENAMED", "Renamed", "old_names"]

RENAMED = {  # older name -> its name now
    "cams": "maps",
    "layer_cams": "layer_maps",
    "pred_cams": "pred_maps",
    "label_cams": "label_maps",
    "contrast_cams": "contrast_maps",
    "compute_cams": "compute_maps",
    "normalize_cams": "normalize_maps",
    "explain_counterfactual": "mistake_counterfactual",
}


def _warn(where: str, old: str) -> None:
    message = f"{where}.{old} is now {where}.{RENAMED[old]}; the old name goes in camlens 0.3"
    warnings.warn(message, DeprecationWarning, stacklevel=3)


class Renamed:
    """A dataclass's attribute under its older name (a class attribute, so not a field)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        _warn(type(obj).__name__, self.old)
        return getattr(obj, RENAMED[self.old])


def old_names(module: str, namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module's `__getattr__` that answers the older names of its functions."""

    def __getattr__(name: str) -> Any:
        if RENAMED.get(name) in namespace:
            _warn(module, name)
            return namespace[RENAMED[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
