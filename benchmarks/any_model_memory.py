"""Peak memory of `camlens report` for a user's model on a large folder of large images.

Writes (once) FOLDER/test/<class>/*.jpg: `--images` images of `--size` px in 4 classes (a
bright quadrant per class, 10% of them filed under a wrong class, so the model makes
mistakes), a small train/ split, a tiny CNN factory FOLDER/net.py and its weights, trained
for a few seconds on the pattern; then runs `camlens report` on it in a child process, cold
(decoding) and again from the pixel cache, and prints each run's peak RSS and wall time.

    python benchmarks/any_model_memory.py                       # 10,000 images of 224 px
    python benchmarks/any_model_memory.py --images 500 --size 64   # a quick check
    python benchmarks/any_model_memory.py --stages   # then the peak of each step, in-process
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ("a", "b", "c", "d")
NET = """from torch import nn


def make(num_classes=4):
    return nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )
"""


def pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noise plus a bright quadrant whose place says the class: (size, size, 3) uint8."""
    img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    q = size // 2
    y, x = divmod(label, 2)
    img[y * q : y * q + q, x * q : x * q + q, label % 3] = 230
    return img


def write_folder(root: Path, images: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4 * 16), ("test", images)):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = i % len(CLASSES)
            filed = label if rng.random() >= 0.1 else (label + 1) % len(CLASSES)
            Image.fromarray(pattern(label, size, rng)).save(
                root / split / CLASSES[filed] / f"{i:05d}.jpg", quality=85
            )


def train_weights(root: Path) -> None:
    """A few hundred SGD steps on 64-px patterns: the model then fails mostly on the 10%."""
    namespace: dict = {}
    exec(compile(NET, "net.py", "exec"), namespace)
    model = namespace["make"]()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(1)
    for _ in range(200):
        labels = rng.integers(0, 4, 32)
        x = torch.from_numpy(np.stack([pattern(int(y), 64, rng) for y in labels]))
        x = (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), root / "net.pt")


def stages(root: Path, limit: int) -> None:
    """Each step of `camlens report` in this process, with the peak RSS it reached (Linux)."""
    from camlens.classifier import ModelConfig, open_model
    from camlens.evaluate import evaluate
    from camlens.explain import ExplainPlan
    from camlens.pipeline import write_galleries
    from camlens.report import compute_report

    def peak(step: str) -> None:
        kib = [
            int(line.split()[1])
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith(("VmHWM", "VmRSS"))
        ]
        print(f"{step}: peak RSS {kib[0] / 2**20:.2f} GiB, then {kib[1] / 2**20:.2f} GiB")
        Path("/proc/self/clear_refs").write_text("5")  # the next step's peak starts here

    config = ModelConfig(f"{root}/net.py:make", root / "net.pt", (0.5,) * 3, (0.25,) * 3)
    opened = open_model(config, root, progress=False)
    model, data = opened.model, opened.data
    peak("open_model (the data, from the cache after the first run)")
    ev = evaluate(model, data.test, 64)
    peak("evaluate")
    with tempfile.TemporaryDirectory() as out:
        plan = ExplainPlan(layers=("model.4",), limit=limit)
        g = write_galleries(model, data, out, plan, mistakes=ev.mistakes)
        peak(f"write_galleries ({len(g.mistakes)} mistakes)")
        compute_report(
            model,
            data.test,
            data.classes,
            plan,
            evaluation=ev,
            explained=(g.mistakes, g.explanations),
        )
        peak(f"compute_report (pair statistics over all {len(ev.mistakes)} mistakes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=100, help="mistakes drawn in the gallery")
    parser.add_argument("--folder", type=Path, help="default: a folder under the temp dir")
    parser.add_argument("--stages", action="store_true", help="also each step's peak RSS")
    args = parser.parse_args()
    root = args.folder or Path(tempfile.gettempdir()) / f"camlens-mem-{args.images}-{args.size}"
    if not (root / "net.pt").is_file():
        started = time.perf_counter()
        write_folder(root, args.images, args.size)
        (root / "net.py").write_text(NET)
        train_weights(root)
        print(f"wrote {root} in {time.perf_counter() - started:.0f}s")
    home = tempfile.mkdtemp(prefix="camlens-mem-home-")  # cache and outputs: delete after
    argv = [
        sys.executable,
        "-m",
        "camlens",
        "report",
        "--model",
        f"{root}/net.py:make",
        "--weights",
        str(root / "net.pt"),
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25,0.25,0.25",
        "--data",
        str(root),
        "--no-progress",
        "--limit",
        str(args.limit),
    ]
    for run in ("cold (decode + cache)", "from the cache"):
        out = Path(home) / run.split()[0]
        started = time.perf_counter()
        with tempfile.TemporaryFile("w+") as log:
            child = subprocess.Popen(
                [*argv, "--out", out],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "CAMLENS_HOME": home},
            )
            _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest
            log.seek(0)
            printed = log.read()
        seconds = time.perf_counter() - started
        peak = usage.ru_maxrss / 2**20  # KiB -> GiB
        code = os.waitstatus_to_exitcode(status)
        print(f"{run}: peak RSS {peak:.2f} GiB, {seconds:.0f}s, exit {code}")
        print("  " + "\n  ".join(printed.strip().splitlines()[-6:]))
    raw = args.images * 3 * args.size**2 / 2**30
    print(f"the test images alone, as uint8: {raw:.2f} GiB; outputs and cache in {home}")
    if args.stages:
        os.environ["CAMLENS_HOME"] = home
        stages(root, args.limit)


if __name__ == "__main__":
    main()
