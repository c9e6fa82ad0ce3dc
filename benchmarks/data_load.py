"""Cold against cached load of a dataset, and one pass over its test split.

An image folder or archive is indexed, not decoded, on load: cold inflates a compressed
archive into the cache and lists (and header-checks) the test split; cached reads the index.
The first pass decodes the test split batch by batch in DataLoader workers, as evaluation
does, and (a split this small) keeps its pixels; the second maps them.
Each runs in a fresh temporary cache folder.

    python benchmarks/data_load.py --data ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import tempfile
import time

from camlens.data import load_dataset
from camlens.data.store import ImageStore


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
        t0 = time.perf_counter()
        images = d.test.images
        batches = images.batches(256) if isinstance(images, ImageStore) else [images]
        seen = sum(b.shape[0] for b in batches)
        passed = time.perf_counter() - t0
        t0 = time.perf_counter()
        batches = images.batches(256) if isinstance(images, ImageStore) else [images]
        again = sum(b.shape[0] for b in batches) / (time.perf_counter() - t0)
    n = len(d.train) + len(d.test)
    print(f"{n} images of {d.image_size}px from {args.data}")
    print(f"cold (index, inflate):     {cold:7.2f} s")
    best = min(cached)
    print(f"cached (best of {args.repeats}):        {best:7.3f} s  ({cold / best:.0f}x faster)")
    print(f"first pass (decode, keep): {passed:7.2f} s  ({seen / passed:,.0f} img/s)")
    print(f"second pass (kept, mapped): {seen / again:7.2f} s  ({again:,.0f} img/s)")


if __name__ == "__main__":
    main()
