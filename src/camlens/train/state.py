"""The resume state: everything a killed run needs to end with the weights of an unbroken one.

Model, optimizer and schedule tensors go into one safetensors file, the scalars into its
metadata, so a single atomic rename makes the whole state current at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open

from camlens.atomic import atomic_save_tensors
from camlens.data import Dataset
from camlens.distributed import world_size
from camlens.train.config import RunError, TrainConfig

__all__ = ["RESUME_FILE", "check_resumable", "load_resume", "save_resume", "saved_config"]

RESUME_FILE = "resume.safetensors"


def save_resume(path: Path, training, history: list[dict], elapsed: float) -> None:
    """Write the whole state of `training` (a `steps.Training`) after its last epoch in
    `history` to `path` in one atomic, synced rename."""
    model, optimizer, scheduler = training.model, training.optimizer, training.scheduler
    config, epoch = training.config, history[-1]["epoch"]
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    scalars = {
        str(i): {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)}
        for i, s in opt["state"].items()
    }
    metadata = {
        "epoch": str(epoch),
        "config": json.dumps(asdict(config)),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "scheduler": json.dumps(scheduler.state_dict()),
        "history": json.dumps(history),
        "elapsed": repr(elapsed),
        "data_checksum": training.data.checksum,
        "world_size": str(world_size()),
    }
    atomic_save_tensors(path, tensors, metadata)


def saved_config(path: Path) -> dict:
    """The settings a run was started with, from its resume state."""
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["config"])


def check_resumable(path: Path, config: TrainConfig, data: Dataset) -> None:
    """Refuse to continue a run with other settings or other data: the result would be neither."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    saved = json.loads(meta["config"])
    # settings that change what is written, not the weights, may differ on resume
    free = ("eval_batch_size", "keep_every")
    differs = {k for k in saved if saved[k] != asdict(config).get(k) and k not in free}
    if differs:
        raise RunError(
            f"{path.parent} was trained with other settings ({', '.join(sorted(differs))}): "
            "resume with the same flags, or choose another --out"
        )
    if meta.get("data_checksum", data.checksum) != data.checksum:
        raise RunError(
            f"{path.parent} was trained on other data (checksum {meta['data_checksum'][:12]}, "
            f"now {data.checksum[:12]}): resume with the same --data, or choose another --out"
        )


def load_resume(path: Path, model, optimizer, scheduler) -> tuple[int, list, float, int]:
    """Restore `save_resume`'s state in place; returns (epoch, history, elapsed seconds, the
    number of processes that trained it)."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        names = f.keys()  # safe_open is not a dict: keys() is its only listing
        tensors = {k: f.get_tensor(k) for k in names}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {int(i): dict(s) for i, s in json.loads(meta["optim_scalars"]).items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    scheduler.load_state_dict(json.loads(meta["scheduler"]))
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    world = int(meta.get("world_size", "1"))
    return int(meta["epoch"]), json.loads(meta["history"]), float(meta["elapsed"]), world
