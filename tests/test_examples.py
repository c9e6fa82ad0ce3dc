"""Every example in a command's --help, the README and docs/ runs, on tiny stand-ins.

tests/test_cli.py checks that each parses; this runs each one, in-process, in a scratch folder
where what the examples name exists: `--data cifar10` and `my-images` are a tiny image folder
(nothing is downloaded), `runs/...` are tiny runs trained by the examples themselves, placeholders
(DATA, DIR, CKPT, A, B) name those, `mynet.py:make` and `net.py:build` are small modules with
their weights. What only changes how long an example takes is turned down (`--epochs 1`, a
narrow model, compare's `--limit 4 --grid-count 8`; `stand_in`); every other flag runs as
written. The two examples naming `timm:` need timm and a weights file: they are skipped here, and
tests/test_architectures.py runs `report --model timm:...` in .ci/run's architecture venv.
"""

import re
import shlex
import shutil
import urllib.request
import zlib
from pathlib import Path

import pytest
import torch

from camlens.cli import main
from conftest import write_image_folder
from test_cli import _commands, _example_lines

pytestmark = pytest.mark.examples

ROOT = Path(__file__).parents[1]

# how long, not what: the first stage's width and the batch
FASTER = {
    "train": ["--width", "8", "--batch-size", "16"],
    "run": ["--width", "8", "--batch-size", "16"],
}

NET = """
import torch
from torch import nn


def make(num_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


build = make
"""


def examples() -> list[tuple[str, str]]:
    texts = {name: sub.format_help() for name, sub in _commands().items()}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        fences = re.findall(r"```(?:bash|console|sh)?\n(.*?)```", doc.read_text(), re.S)
        texts[doc.name] = "\n".join(fences)
    found, seen = [], set()
    for where, text in texts.items():
        for command in _example_lines(text):
            command = " ".join(command.split())
            if command not in seen:
                seen.add(command)
                found.append((where, command))
    return found


def stand_in(command: str, fresh: str = "") -> list[str]:
    """The example's argv with the stand-ins' names and `FASTER`; its --out under `fresh`
    (each example writes its own folder, as two users would; a --resume continues the
    scene's run)."""
    # absolute paths (/tmp/demo, /shared/runs) land in the scratch folder too
    words = [
        w.lstrip("/") if w.startswith(("/shared/", "/tmp/")) else w for w in shlex.split(command)
    ]
    names = {
        "cifar10": "images",
        "my-images": "images",
        "DATA": "images",
        "DIR": "images",
        "imagenet/": "val-only",
        "imagenet/val": "val-only",
        "A": "runs/quick/checkpoint.safetensors",
        "B": "runs/r18/checkpoint.safetensors",
        "CKPT": "runs/r18/checkpoint.safetensors",
    }
    out = []
    for i, w in enumerate(words):
        flag = words[i - 1] if i else ""
        if flag in ("--data", "--checkpoint") and w in names:
            w = names[w]
        elif flag == "--epochs":
            w = "1"
        elif flag == "--out" and "--resume" not in words:
            w = str(Path(fresh) / w) if fresh else w
        elif flag == "--limit" and words[0] == "compare":
            w = "4"  # images scored per method and layer
        out.append(w)
    out += FASTER.get(out[0], [])
    if out[0] in ("train", "run") and "--epochs" not in out:
        out += ["--epochs", "1"]
    if out[0] == "view":  # any free port: the examples' 8036 may be taken here
        out += ["--port", "0"]
    if out[0] == "compare":  # images scored, grids built
        out += ([] if "--limit" in out else ["--limit", "4"]) + ["--grid-count", "8"]
    flags = {f for action in _commands()[out[0]]._actions for f in action.option_strings}
    return [*out, "--no-progress"] if "--no-progress" in flags else out


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A scratch folder holding what the examples name."""
    root = tmp_path_factory.mktemp("examples")
    write_image_folder(root / "images", n_train=6, n_test=3)
    val = root / "val-only" / "val"  # an ImageNet-style folder: val/<class>/ alone
    write_image_folder(root / "scratch", n_train=0, n_test=3, size=48)
    val.parent.mkdir()
    (root / "scratch" / "test").rename(val)
    (root / "mynet.py").write_text(NET)
    (root / "net.py").write_text(NET)
    torch.manual_seed(0)
    for name in ("mynet.pt", "net.pt"):
        namespace: dict = {}
        exec(compile(NET, "net.py", "exec"), namespace)  # the user's factory, as --model runs it
        torch.save(namespace["make"](4).state_dict(), root / name)
    _train(root, "runs/quick")
    _train(root, "runs/r18", "--keep-every", "1")  # what `explain --over-epochs runs/r18` reads
    for copy in ("runs/bn", "runs/ln"):  # diff's two runs
        shutil.copytree(root / "runs/quick", root / copy)
    return root


def _train(root: Path, out: str, *more: str) -> None:
    argv = ["train", "--data", str(root / "images"), "--out", str(root / out), "--epochs", "1"]
    assert main([*argv, *FASTER["train"], *more, "--no-progress"]) == 0


@pytest.mark.parametrize(("where", "command"), examples(), ids=lambda x: x[:60])
def test_the_example_runs(where, command, scene, monkeypatch, capsys):
    if "timm:" in command or "torchvision:" in command:
        pytest.skip("a timm: model and its weights: tests/test_architectures.py, .venv-arch")
    monkeypatch.chdir(scene)
    if command.startswith("view"):
        _serve_once(monkeypatch)
        if "camlens-demo" in command and not (scene / "camlens-demo").is_dir():
            assert main(["demo"]) == 0  # what the demo example wrote, when run alone
    argv = stand_in(command, f"outs/{zlib.crc32(command.encode()):08x}")
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, f"{where}: camlens {' '.join(argv)}\n{err}"


def _serve_once(monkeypatch) -> None:
    """`camlens view` serves until Ctrl-C: here it answers one request for its page and a page
    of its rows, then stops."""
    from camlens.view import server

    def wait(running) -> None:
        try:
            for path in ("", "api/rows"):
                with urllib.request.urlopen(running.url + path, timeout=120) as reply:
                    assert reply.status == 200, path
        finally:
            running.stop()

    monkeypatch.setattr(server.Running, "wait", wait)


def test_stand_ins_keep_every_other_flag():
    argv = stand_in(
        "compare --checkpoint r/c.safetensors --data cifar10 --out cmp --method gradcam", "o"
    )
    want = "compare --checkpoint r/c.safetensors --data images --out o/cmp --method gradcam"
    assert argv == [*want.split(), "--limit", "4", "--grid-count", "8", "--no-progress"]
