"""Set up the 1,000-class report of issue 33 and print the command that measures it.

Writes, under the folder given (default /tmp/kscale): `imgs/` (1,000 class folders; `test/`
3 JPEGs of 64 px per class (`--per-class`, `--size`), `train/` 1, since the loader still
asks for a train split),
`net.py` (a small CNN with 1,000 outputs, `build()`) and `net.pt` (its seeded random weights:
nearly every image is a mistake, the heaviest case for the report). Each class has its own
colour and stripe, with noise, so images are structured rather than white noise.

    python benchmarks/report_kscale.py /tmp/kscale
    /usr/bin/time -v camlens report --model /tmp/kscale/net.py:build \\
        --weights /tmp/kscale/net.pt --data /tmp/kscale/imgs --mean 0.5,0.5,0.5 \\
        --std 0.25,0.25,0.25 --limit 16 --out /tmp/kscale/out --no-progress

docs/performance.md has the figures (wall time, peak RSS, report.html size). With
`--size 224 --per-class 1` and `--limit 1000 --no-counterfactual` it makes the 1,000-card
report whose bytes per card docs/report.md states.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

K, TRAIN_PER_CLASS = 1000, 1

NET = '''import torch
from torch import nn


def build(num_classes: int = 1000) -> nn.Module:
    """A small CNN with 1,000 outputs: two strided convolutions, pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )
'''


def picture(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8: class k's colour and stripe period, plus noise."""
    colour = np.array([(k * 37) % 256, (k * 91) % 256, (k * 53) % 256], np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    stripe = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + yy * (k % 3)) / (4 + k % 13) * size / 64)
    img = colour * stripe[..., None] + rng.normal(0, 25, (size, size, 3))
    return img.clip(0, 255).astype(np.uint8)


def main(root: Path, size: int, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("test", per_class), ("train", TRAIN_PER_CLASS)):
        for k in range(K):
            folder = root / "imgs" / split / f"class{k:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(picture(k, size, rng)).save(folder / f"{i}.jpg", quality=90)
    (root / "net.py").write_text(NET)
    namespace: dict = {}
    exec(compile(NET, str(root / "net.py"), "exec"), namespace)
    torch.manual_seed(0)
    torch.save(namespace["build"]().state_dict(), root / "net.pt")
    print(f"wrote {root}/imgs ({K} classes, {K * per_class} test images), net.py, net.pt")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, nargs="?", default=Path("/tmp/kscale"))
    parser.add_argument("--size", type=int, default=64, help="image side, px (default: 64)")
    parser.add_argument("--per-class", type=int, default=3, help="test images per class")
    args = parser.parse_args()
    main(args.root, args.size, args.per_class)
