import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from camlens.cli import main
from camlens.data import Dataset, Split, channel_stats, load_dataset
from camlens.evaluate import resolve_precision
from camlens.model import load_checkpoint
from camlens.train import RunError, TrainConfig, train
from conftest import write_image_folder

TINY = {"width": 8, "batch_size": 8, "eval_batch_size": 32}


def quiet(_line: str) -> None:
    pass


def test_a_short_run_writes_every_artefact(tmp_path, tiny_folder):
    data = load_dataset(tiny_folder, progress=False)
    config = TrainConfig(epochs=2, **TINY)
    last = train(config, data, tmp_path / "run", progress=False)
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
    used = resolve_precision(config.precision, torch.device("cpu"))
    assert meta["recipe"]["precision_used"] == used  # what "auto" became on this machine
    mean, std = channel_stats(data.train.images)
    assert meta["mean"] == pytest.approx(mean) and meta["std"] == pytest.approx(std)
    model, _ = load_checkpoint(run / "checkpoint.safetensors")
    assert model.linear.out_features == len(data.classes)


def test_a_run_folder_is_never_overwritten(tmp_path, tiny_folder):
    data = load_dataset(tiny_folder, progress=False)
    train(TrainConfig(epochs=1, **TINY), data, tmp_path, progress=False)
    with pytest.raises(RunError, match="--resume"):
        train(TrainConfig(epochs=1, **TINY), data, tmp_path, progress=False)
    with pytest.raises(RunError, match="other settings.*lr"):
        train(TrainConfig(epochs=1, lr=0.5, **TINY), data, tmp_path, resume=True)
    other = replace(data, checksum="0" * 64)
    with pytest.raises(RunError, match="other data"):
        train(TrainConfig(epochs=1, **TINY), other, tmp_path, resume=True)


def test_one_cycle_swings_momentum_around_the_configured_value(tmp_path, tiny_folder):
    from safetensors import safe_open

    data = load_dataset(tiny_folder, progress=False)
    train(TrainConfig(epochs=1, momentum=0.8, **TINY), data, tmp_path, progress=False)
    with safe_open(str(tmp_path / "resume.safetensors"), "pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
    assert groups[0]["max_momentum"] == pytest.approx(0.85)
    assert groups[0]["base_momentum"] == pytest.approx(0.75)


def test_subset_is_balanced_and_counted(tmp_path, tiny_folder):
    data = load_dataset(tiny_folder, progress=False)
    train(TrainConfig(epochs=1, subset=16, **TINY), data, tmp_path, progress=False)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["train_images"] == 16
    assert meta["metrics"]["images_per_s"] > 0


def blobs(n: int, seed: int, size: int = 16) -> Split:
    """Noise with one square whose colour is the class, anywhere: crops and flips keep it."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 100, (n, 3, size, size), generator=g, dtype=torch.uint8)
    colours = torch.tensor([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40]])
    r = size // 4
    ys, xs = torch.randint(0, size - r, (2, n), generator=g)
    for i in range(n):
        images[i, :, ys[i] : ys[i] + r, xs[i] : xs[i] + r] = colours[labels[i], :, None, None]
    return Split(images, labels)


def test_training_learns_a_learnable_task(tmp_path, one_thread):
    data = Dataset(blobs(384, seed=0), blobs(192, seed=1), ("r", "g", "b", "y"), "blobs", "0" * 64)
    config = TrainConfig(epochs=6, width=8, batch_size=32, eval_batch_size=192)
    history: list[dict] = []
    train(config, data, tmp_path, progress=False, on_epoch=history.append)
    first, last = history[0], history[-1]
    assert last["train_loss"] < 0.75 * first["train_loss"], (first, last)
    assert last["test_acc"] > 0.6, last  # chance is 0.25


@pytest.mark.parametrize(
    "failing", ["checkpoint.safetensors", "checkpoint.json", "metrics.jsonl", "resume.safetensors"]
)
def test_a_full_disk_is_one_line_and_keeps_the_last_epoch(
    tmp_path, tiny_folder, monkeypatch, capsys, failing
):
    """From the end of epoch 1 the disk is full for `failing`: epoch 2 cannot be saved."""
    run = tmp_path / "run"
    doomed: set[int] = set()  # descriptors of temporary files the full disk refuses
    real_mkstemp, real_write = tempfile.mkstemp, os.write

    def mkstemp(*args, prefix: str = "", **kwargs):
        fd, name = real_mkstemp(*args, prefix=prefix, **kwargs)
        if prefix.startswith(f".{failing}.") and (run / "resume.safetensors").exists():
            doomed.add(fd)
        return fd, name

    def write(fd, data):
        if fd in doomed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "write", write)
    argv = ["train", "--data", str(tiny_folder), "--out", str(run), "--epochs", "2"]
    argv += ["--width", "8", "--batch-size", "8", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(run / failing) in err and "ENOSPC" in err, err
    assert "--resume" in err
    saved = 1 if failing.startswith("checkpoint") else 2  # files written before it hold epoch 2
    assert load_checkpoint(run / "checkpoint.safetensors")[1]["epoch"] == saved
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.undo()  # space freed: the run continues and ends as an unbroken one would
    assert main([*argv, "--resume"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert load_checkpoint(run / "checkpoint.safetensors")[1]["epoch"] == 2


def test_every_artefact_is_synced_before_its_rename_and_its_folder_after(
    tmp_path, tiny_folder, monkeypatch
):
    synced: list[int] = []  # inodes, in order; a renamed file keeps its temporary's inode
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real(fd)))
    data = load_dataset(tiny_folder, progress=False)
    train(TrainConfig(epochs=1, **TINY), data, tmp_path, progress=False)
    folder = tmp_path.stat().st_ino
    names = ["resume.safetensors", "checkpoint.safetensors", "checkpoint.json"]
    for name in [*names, "metrics.jsonl", "curves.png"]:
        inode = (tmp_path / name).stat().st_ino
        assert inode in synced, f"{name} was not synced"
        assert folder in synced[synced.index(inode) + 1 :], f"{name}'s rename was not synced"


@pytest.mark.parametrize("extra", [[], ["--subset", "300"]])
def test_data_without_training_images_is_one_line(tmp_path, capsys, extra):
    argv = ["train", "--data", "sample", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no training images" in err and "cifar10" in err, err


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


@pytest.mark.layout
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
    # exact by construction: the resumed epochs run the same ops on the same batches, from the
    # saved weights and RNG state, in a process like the first (same machine, same threads)
    for key in full:  # weights, momentum buffers and the RNG state
        assert torch.equal(full[key], resumed[key]), key
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_the_budget_decides_cutout_and_zero_init_unless_asked(capsys):
    from camlens.train import CUTOUT_FROM, ZERO_INIT_BELOW

    def decided(steps=1950, saved=None, **kw):
        config = TrainConfig(**kw).decided(steps, saved)
        return config.cutout, config.zero_init_residual

    assert TrainConfig(epochs=5).cutout is None  # auto until the run's length is known
    assert decided(epochs=5) == (False, False)  # 5 epochs of CIFAR-10: neither pays
    assert decided(epochs=CUTOUT_FROM - 1)[0] is False and decided(epochs=CUTOUT_FROM)[0]
    assert decided(epochs=80, steps=80 * 390) == (True, False)
    assert decided(steps=ZERO_INIT_BELOW - 1)[1] and not decided(steps=ZERO_INIT_BELOW)[1]
    for norm in ("layer", "group"):  # without it these norms lag far behind
        assert decided(norm=norm, steps=10**6)[1] is True
    assert decided(epochs=5, cutout=True, zero_init_residual=True) == (True, True)
    assert decided(epochs=80, cutout=False) == (False, False)
    # a resumed run keeps what it decided at its start, whatever today's rules say
    assert decided(epochs=5, saved={"cutout": True, "zero_init_residual": True}) == (True, True)
    assert decided(epochs=5, cutout=False, saved={"cutout": True}) == (False, False)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"on for runs of {CUTOUT_FROM} epochs or more" in help_text
    assert f"for batch norm only in runs of fewer than {ZERO_INIT_BELOW} steps" in help_text


def test_the_checkpoint_records_what_the_budget_decided(tmp_path, tiny_folder):
    data = load_dataset(tiny_folder, progress=False)
    train(TrainConfig(epochs=1, **TINY), data, tmp_path / "run", progress=False)
    recipe = json.loads((tmp_path / "run" / "checkpoint.json").read_text())["recipe"]
    assert recipe["cutout"] is False and recipe["zero_init_residual"] is True  # a few steps
    assert "cutout" not in recipe["augmentation"]
