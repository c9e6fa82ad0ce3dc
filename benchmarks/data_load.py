"""Cold against cached load of a dataset (60,000 images for the CIFAR-10 archive).

Cold decodes every image (in worker processes) and writes the cache; cached reads two .npy
files per split. Each runs in a fresh CAMLENS_HOME-free temporary cache folder.

    python benchmarks/data_load.py --data ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import tempfile
import time

from camlens.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    parser.add_argument("--repeats", type=int, default=3, help="cached loads to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        t0 = time.perf_counter()
        d = load_dataset(args.data, home=home, progress=False)
        cold = time.perf_counter() - t0
        cached = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            load_dataset(args.data, home=home, progress=False)
            cached.append(time.perf_counter() - t0)
    n = len(d.train) + len(d.test)
    print(f"{n} images of {d.image_size}px from {args.data}")
    print(f"cold (decode + write cache): {cold:7.2f} s  ({n / cold:,.0f} img/s)")
    best = min(cached)
    print(f"cached (best of {args.repeats}):        {best:7.3f} s  ({cold / best:.0f}x faster)")


if __name__ == "__main__":
    main()
