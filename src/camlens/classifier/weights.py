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

__all__ = ["SAVE_HOWTO", "load_weights", "read_state_dict"]

SAVE_HOWTO = "save its weights instead: torch.save(model.state_dict(), 'weights.pt')"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"cannot read {path}: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds a pickled object, not a state dict, and camlens unpickles nothing: "
            f"{SAVE_HOWTO}"
        ) from None
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):  # common training wrappers
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors: {SAVE_HOWTO}")
    return state


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict into `model`; keys or shapes that differ are named in the error."""
    state = read_state_dict(Path(path))
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
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
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
