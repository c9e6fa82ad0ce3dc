"""Weights for a user's model: a .safetensors file or a state dict in .pt/.pth, never a pickle.

`torch.load(weights_only=True)` refuses any pickled object but tensors and plain containers,
so a whole pickled model is an error that says how to save a state dict instead.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from camlens.model import CheckpointError

__all__ = ["SAVE_HOWTO", "head_classes", "load_weights", "read_state_dict"]

SAVE_HOWTO = "save its weights instead: torch.save(model.state_dict(), 'weights.pt')"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or a .pt/.pth state dict, without DDP's `module.`."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds a pickled object, not a state dict, and camlens unpickles nothing: "
            f"{SAVE_HOWTO}"
        ) from None
    except Exception as e:  # safetensors and torch raise their own types for damaged files
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):  # common training wrappers
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors: {SAVE_HOWTO}")
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def head_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The class count of the head `state` was saved with, where `model` (built for another
    count) differs from it there alone: every tensor whose shape differs, differs only in its
    first dimension, with one count in the model and one in `state`. None otherwise."""
    expected = model.state_dict()
    pairs = [(tuple(expected[k].shape), tuple(v.shape)) for k, v in state.items() if k in expected]
    wrong = [(m, w) for m, w in pairs if m != w]
    counts = {(m[0], w[0]) for m, w in wrong if m and len(m) == len(w) and m[1:] == w[1:]}
    if not wrong or len(counts) != 1 or any(m[1:] != w[1:] or not m for m, w in wrong):
        return None
    return counts.pop()[1]


def load_weights(
    model: nn.Module,
    path: str | Path,
    state: dict[str, torch.Tensor] | None = None,
    hint: str = "",
) -> None:
    """Load a state dict into `model`; keys or shapes that differ are named in the error.

    `state`: `path` already read; `hint`: what to do about shapes that differ, said after them.
    """
    state = read_state_dict(Path(path)) if state is None else state
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(v.shape)} (model {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{what} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape of", wrong))
        if keys
    ]
    if problems:
        how = f": {hint}" if wrong and hint else ""
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__}: {'; '.join(problems)}{how}"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
