"""What `camlens.Watch` costs a training loop, per call, beside what the loop does anyway.

The shipped ResNet18 (fp32 on the device) and the bundled 1,000-image sample as test data, in
one process: a plain prediction pass over the test data (what an evaluation per epoch costs),
`watch.epoch(n)` on an epoch it does not keep, on a kept epoch without a logger (the weights
copied to disk) and with a TensorBoard logger (plus a prediction pass and `cards` cards), and
`watch.finish()` with E kept epochs. Each figure is the median of `--repeats` calls.

    python benchmarks/watch_cost.py [--repeats 3] [--kept 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from camlens.data import load_dataset
from camlens.evaluate import predict
from camlens.model import load_checkpoint
from camlens.watch import Watch


def median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kept", type=int, default=4, help="kept epochs before finish()")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from torch.utils.tensorboard import SummaryWriter

    device = torch.device(args.device)
    model, _ = load_checkpoint("shipped", device)
    model.train()
    sample = load_dataset("sample")
    out = Path(tempfile.mkdtemp(prefix="watch-cost-"))
    test = (sample.test.images, sample.test.labels)
    n = len(sample.test)
    print(f"shipped ResNet18 on {device}, {n} test images, {torch.get_num_threads()} threads")

    eval_pass = median_seconds(lambda: predict(model, sample.test.images, 64), args.repeats)
    plain = Watch(model, test, out / "plain", every=1000, classes=sample.classes)
    skipped = median_seconds(lambda: plain.epoch(1), args.repeats)
    kept = Watch(model, test, out / "kept", every=1, classes=sample.classes)
    keep = median_seconds(lambda: kept.epoch(1), args.repeats)
    writer = SummaryWriter(str(out / "tb"))
    logged = Watch(model, test, out / "logged", every=1, classes=sample.classes, logger=writer)
    log = median_seconds(lambda: logged.epoch(1), args.repeats)
    for e in range(1, args.kept + 1):
        kept.epoch(e)
    finish = median_seconds(kept.finish, 1)
    size = (out / "kept" / "epochs" / "epoch-001.safetensors").stat().st_size / 1e6

    print(f"{'what':58s} {'seconds':>8s} {'x eval pass':>12s}")
    rows = [
        ("one prediction pass over the test data (the reference)", eval_pass),
        ("watch.epoch(n), an epoch not kept", skipped),
        (f"watch.epoch(n), kept: weights to disk ({size:.0f} MB fp16)", keep),
        ("watch.epoch(n), kept, TensorBoard logger: + pass + 4 cards", log),
        (f"watch.finish(), {args.kept} kept epochs + final, 16 mistakes", finish),
    ]
    for what, seconds in rows:
        print(f"{what:58s} {seconds:8.3f} {seconds / eval_pass:12.2f}")


if __name__ == "__main__":
    main()
