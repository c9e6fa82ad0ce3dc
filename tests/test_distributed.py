"""torchrun on the CPU (gloo, two processes): the same weights, maps and files as one process.

Each test launches `python -m torch.distributed.run` (torchrun) on a tiny layer-norm model:
batch norm's statistics would be per rank without --sync-bn, and SyncBatchNorm needs GPUs,
while layer norm has no batch statistics, so two processes must equal one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from camlens import distributed
from camlens.cli import main
from camlens.data import load_dataset
from camlens.train import RunError, TrainConfig, train
from conftest import write_image_folder

pytestmark = [
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="this torch build has no gloo backend",
    ),
    pytest.mark.layout,
]

# 64 training images, 8 steps an epoch of a global batch of 8: 4 images a rank
TRAIN = ["--epochs", "4", "--width", "8", "--batch-size", "8", "--eval-batch-size", "8"]
TRAIN += ["--norm", "layer", "--precision", "fp32", "--lr", "0.02", "--seed", "3"]


def torchrun(*argv: str, restarts: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [f"--max-restarts={restarts}", "--monitor-interval=0.1", "-m", "camlens", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen) -> str:
    out = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp") / "data"
    write_image_folder(root, n_train=16, n_test=6, size=16)
    return root


@pytest.fixture(scope="module")
def two_proc_run(data) -> tuple[Path, str]:
    """An uninterrupted two-process run, and what it printed."""
    out = data.parent / "two"
    log = finish(torchrun("train", "--data", str(data), "--out", str(out), *TRAIN, "--no-progress"))
    return out, log


def test_two_processes_train_the_weights_of_one(tmp_path, data, two_proc_run):
    two, log = two_proc_run
    one = tmp_path / "one"
    assert main(["train", "--data", str(data), "--out", str(one), *TRAIN, "--no-progress"]) == 0
    a = load_file(str(one / "checkpoint.safetensors"))
    b = load_file(str(two / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    # the test accuracy is every rank's share added up: that of the whole test split
    m1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["test_acc"] for m in m2] == [m["test_acc"] for m in m1]
    assert [m["train_acc"] for m in m2] == [m["train_acc"] for m in m1]
    for m, n in zip(m1, m2, strict=True):
        assert n["test_loss"] == pytest.approx(m["test_loss"], rel=1e-4)
    # one set of artefacts, written by rank 0 alone, which alone logged
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert log.count("epoch 4/4") == 1 and log.count("checkpoint:") == 1, log
    meta1 = json.loads((one / "checkpoint.json").read_text())
    meta2 = json.loads((two / "checkpoint.json").read_text())
    assert (meta1["world_size"], meta1["backend"]) == (1, None)
    assert (meta2["world_size"], meta2["backend"]) == (2, "gloo")


def test_run_trains_on_every_rank_then_rank_0_alone_mirrors_and_reports(
    tmp_path, data, two_proc_run, monkeypatch
):
    """`camlens run` under torchrun: the weights of a two-process `train`, one W&B run and one
    TensorBoard mirror, one report."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no key: offline, never the network
    out = tmp_path / "run"
    argv = ["run", "--data", str(data), "--out", str(out), *TRAIN, "--layer", "layer4"]
    log = finish(torchrun(*argv, "--tensorboard", "--wandb", "--no-progress"))
    a = load_file(str(two_proc_run[0] / "checkpoint.safetensors"))
    b = load_file(str(out / "checkpoint.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert log.count("epoch 4/4") == 1 and log.count("report:") == 1, log
    assert (out / "report.html").is_file() and (out / "gallery" / "gradcam" / "index.csv").is_file()
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len(list((out / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


def _workers(pid: int) -> dict[int, int]:
    """rank -> pid of the torchrun workers below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
            if ranks and any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in env):
                found[ranks[0]] = child
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds workers in /proc")
def test_a_killed_rank_resumes_to_the_weights_of_an_unbroken_run(tmp_path, data, two_proc_run):
    """SIGKILL rank 1 mid-run: torchrun restarts both ranks, which continue with --resume."""
    out = tmp_path / "killed"
    proc = torchrun(
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *TRAIN,
        "--no-progress",
        "--resume",
        restarts=1,
    )
    deadline = time.monotonic() + 120
    while not (out / "resume.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the 3 epochs left take about a second
    os.kill(_workers(proc.pid)[1], signal.SIGKILL)
    log = finish(proc)
    assert "resuming" in log, "the kill must land before the run ended"
    full = load_file(str(two_proc_run[0] / "resume.safetensors"))
    resumed = load_file(str(out / "resume.safetensors"))
    assert full.keys() == resumed.keys()
    # exact by construction: two ranks of one thread each in both runs, the same batches from
    # the saved weights and RNG state; only the layout of the work would break it, and that
    # is the same here
    for key in full:  # weights, momentum buffers and the RNG state
        assert torch.equal(full[key], resumed[key]), key
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_two_processes_explain_and_evaluate_as_one(tmp_path, data, two_proc_run, one_thread):
    ckpt = str(two_proc_run[0] / "checkpoint.safetensors")
    argv = ["--checkpoint", ckpt, "--data", str(data), "--no-progress"]
    # batches of 4 split the mistakes between the ranks, rank 1's share the shorter
    explain = ["explain", *argv, "--cam-batch-size", "4", "--layer", "layer3,layer4"]
    proc = torchrun(*explain, "--out", str(tmp_path / "two"))
    assert main([*explain, "--out", str(tmp_path / "one")]) == 0
    log = finish(proc)
    assert log.count("explained") == 1, log
    # exact by construction, on any CPU: each rank explains whole CAM batches, the ones one
    # process forms, at one thread as this process does here (one_thread), and the gather
    # only concatenates; at two threads the files would be equal only to rounding
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*"))
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*"))
    assert one == two and len(one) > 8
    for rel in one:  # the same mistakes in the same order, drawn from the same maps
        if (tmp_path / "one" / rel).is_file():
            assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()

    proc = torchrun("evaluate", *argv, "--eval-batch-size", "8", "--out", str(tmp_path / "e2"))
    assert main(["evaluate", *argv, "--eval-batch-size", "8", "--out", str(tmp_path / "e1")]) == 0
    finish(proc)
    for name in ("misclassified.csv", "confusion.csv"):
        assert (tmp_path / "e1" / name).read_text() == (tmp_path / "e2" / name).read_text()


def test_two_processes_compare_as_one(tmp_path, data, two_proc_run, one_thread):
    ckpt = str(two_proc_run[0] / "checkpoint.safetensors")
    # 3 (method, layer) sets + 2 baselines per subset: rank 1 gets the shorter share
    argv = [
        "compare",
        "--checkpoint",
        ckpt,
        "--data",
        str(data),
        "--no-progress",
        "--limit",
        "3",
        "--method",
        "gradcam,layercam,eigencam",
        "--layer",
        "layer4",
        "--cam-batch-size",
        "4",
    ]
    proc = torchrun(*argv, "--out", str(tmp_path / "two"))
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    log = finish(proc)
    assert log.count("scored") == 1, log
    # every score and sanity curve as one process, exact by construction on any CPU: each
    # task is scored whole by one rank on the batches one process forms, at one thread as this
    # process here (one_thread), and the sum over ranks adds zeros. The time estimate is timed
    # on the machine of the moment (its forward and map costs), so it is the one thing left out
    one, two = (json.loads((tmp_path / d / "compare.json").read_text()) for d in ("one", "two"))
    solo, pair = one["settings"].pop("estimate"), two["settings"].pop("estimate")
    # the estimate counts the whole job's forwards and times the busiest rank's share
    assert (solo["ranks"], pair["ranks"]) == (1, 2)
    assert solo["forwards_per_rank"] == solo["forwards"]
    assert pair["forwards"] / 2 <= pair["forwards_per_rank"] < pair["forwards"]
    assert "on the busiest of 2 ranks" in pair["summary"]
    assert pair["seconds"] == pytest.approx(
        pair["forwards_per_rank"] * pair["seconds_per_forward"], rel=1e-2, abs=0.1
    )
    assert one == two
    assert (tmp_path / "one" / "compare.csv").read_text() == (
        tmp_path / "two" / "compare.csv"
    ).read_text()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        ["compare.csv", "compare.json", "compare.png", "sanity.png"]
    )


@pytest.mark.parametrize(("n", "align", "world"), [(10, 1, 3), (10, 4, 2), (3, 4, 2), (0, 4, 2)])
def test_shards_cover_the_items_in_order_at_whole_batches(monkeypatch, n, align, world):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    covered = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        rows = distributed.shard(n, align)
        assert rows.start % align == 0 or rows.start == n
        covered += range(n)[rows]
    assert covered == list(range(n))


def test_one_process_never_starts_a_group(tmp_path, data, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a single process initialised a process group")

    monkeypatch.setattr(torch.distributed, "init_process_group", refuse)
    argv = ["train", "--data", str(data), "--out", str(tmp_path), "--subset", "16", "--epochs", "1"]
    assert main([*argv, "--width", "8", "--batch-size", "8", "--no-progress"]) == 0
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"batch_size": 9}, "multiple of 2"),
        ({"batch_size": 8, "sync_bn": True}, "--sync-bn needs CUDA"),
    ],
)
def test_what_two_processes_cannot_do_is_one_line(tmp_path, data, monkeypatch, config, error):
    from camlens.train import loop

    monkeypatch.setattr(loop, "world_size", lambda: 2)  # raised before any collective
    with pytest.raises(RunError, match=error):
        train(TrainConfig(width=8, **config), load_dataset(data, progress=False), tmp_path)
