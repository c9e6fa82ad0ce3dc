import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from camlens.data import channel_stats, load_dataset
from camlens.model import load_checkpoint
from camlens.train import RunError, TrainConfig, train
from conftest import write_image_folder

TINY = {"width": 8, "batch_size": 8, "eval_batch_size": 32}


def quiet(_line: str) -> None:
    pass


def test_a_short_run_writes_every_artefact(tmp_path, tiny_folder):
    data = load_dataset(tiny_folder, progress=False)
    config = TrainConfig(epochs=2, **TINY)
    last = train(config, data, tmp_path / "run", progress=False, log=quiet)
    run = tmp_path / "run"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and history[-1] == last
    for key in (
        "lr",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "seconds",
        "images_per_s",
    ):
        assert all(isinstance(h[key], float) for h in history), key
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["epoch"] == 2 and meta["classes"] == list(data.classes)
    assert meta["data_checksum"] == data.checksum and meta["recipe"]["width"] == 8
    mean, std = channel_stats(data.train.images)
    assert meta["mean"] == pytest.approx(mean) and meta["std"] == pytest.approx(std)
    model, _ = load_checkpoint(run / "checkpoint.safetensors")
    assert model.linear.out_features == len(data.classes)


def test_a_run_folder_is_never_overwritten(tmp_path, tiny_folder):
    data = load_dataset(tiny_folder, progress=False)
    train(TrainConfig(epochs=1, **TINY), data, tmp_path, progress=False, log=quiet)
    with pytest.raises(RunError, match="--resume"):
        train(TrainConfig(epochs=1, **TINY), data, tmp_path, progress=False, log=quiet)
    with pytest.raises(RunError, match="other settings.*lr"):
        train(TrainConfig(epochs=1, lr=0.5, **TINY), data, tmp_path, resume=True, log=quiet)
    other = replace(data, checksum="0" * 64)
    with pytest.raises(RunError, match="other data"):
        train(TrainConfig(epochs=1, **TINY), other, tmp_path, resume=True, log=quiet)


def test_one_cycle_swings_momentum_around_the_configured_value(tmp_path, tiny_folder):
    from safetensors import safe_open

    data = load_dataset(tiny_folder, progress=False)
    train(TrainConfig(epochs=1, momentum=0.8, **TINY), data, tmp_path, progress=False, log=quiet)
    with safe_open(str(tmp_path / "resume.safetensors"), "pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
    assert groups[0]["max_momentum"] == pytest.approx(0.85)
    assert groups[0]["base_momentum"] == pytest.approx(0.75)


def test_subset_is_balanced_and_counted(tmp_path, tiny_folder):
    data = load_dataset(tiny_folder, progress=False)
    train(TrainConfig(epochs=1, subset=16, **TINY), data, tmp_path, progress=False, log=quiet)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["train_images"] == 16
    assert meta["metrics"]["images_per_s"] > 0


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="norm"):
        TrainConfig(norm="instance")


def _cli(out, data, *extra):
    return [
        sys.executable,
        "-m",
        "camlens",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "6",
        "--width",
        "8",
        "--batch-size",
        "8",
        "--seed",
        "5",
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    """The acceptance test of resume: kill -9 mid-run, resume, compare every weight exactly."""
    data = tmp_path / "data"
    write_image_folder(data, n_train=48, n_test=4)
    env = {**os.environ, "CAMLENS_HOME": str(tmp_path / "home")}
    subprocess.run(_cli(tmp_path / "full", data), env=env, check=True, capture_output=True)

    proc = subprocess.Popen(
        _cli(tmp_path / "killed", data),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = json.loads((tmp_path / "killed" / "checkpoint.json").read_text())["epoch"]
    assert 1 <= epoch < 6, "the kill must land before the run ended"

    subprocess.run(
        _cli(tmp_path / "killed", data, "--resume"), env=env, check=True, capture_output=True
    )
    full = load_file(str(tmp_path / "full" / "resume.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "resume.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:  # weights, momentum buffers and the RNG state
        assert torch.equal(full[key], resumed[key]), key
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]
