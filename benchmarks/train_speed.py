"""Training throughput: the full `camlens.train` loop against the bare model step.

The bare step is forward + backward + SGD on one batch that already sits on the device, in the
same precision and memory format; the full loop adds sampling, uint8 -> float, batched
augmentation, the schedule, metrics and the progress bar. Their ratio is what the data pipeline
and logging cost. Both run in this one process, side by side.

    python benchmarks/train_speed.py --data ../shared/data/cifar10-jpeg.tar.gz [--steps 40]
    python benchmarks/train_speed.py --formats    # bare step: fp32/bf16 x channels-last on/off
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from camlens.data import load_dataset
from camlens.model import ResNet18
from camlens.train import TrainConfig, train


def bare_step_rate(config: TrainConfig, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    model = ResNet18(10, config.norm, config.width).to(device).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.rand(config.batch_size, 3, 32, 32, device=device)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (config.batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=config.precision != "fp32"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    parser.add_argument("--steps", type=int, default=40, help="steps timed in each mode")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--formats", action="store_true", help="why bf16 and channels-last")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.formats:
        for precision in ("fp32", "auto"):
            for channels_last in (False, True):
                config = TrainConfig(
                    batch_size=args.batch_size, precision=precision, channels_last=channels_last
                )
                rate = bare_step_rate(config, max(args.steps // 4, 5), device)
                name = "fp32" if precision == "fp32" else "bf16 autocast"
                print(f"{name:<14} channels_last={channels_last!s:<5} {rate:8.1f} img/s")
        return
    data = load_dataset(args.data, progress=False)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, subset=args.steps * args.batch_size)
    print(
        f"device {device}, {torch.get_num_threads()} threads, batch {config.batch_size}, "
        f"precision {config.precision}, channels_last {config.channels_last}"
    )
    bare = bare_step_rate(config, args.steps, device)
    with tempfile.TemporaryDirectory() as out:
        # the first steps of a run pay for allocator warm-up; the bare step warmed up too
        full = train(config, data, out, device=device, progress=True, log=lambda s: None)
    print(f"bare model step      {bare:8.1f} img/s")
    print(f"full training loop   {full['images_per_s']:8.1f} img/s")
    print(f"pipeline + logging cost: {100 * (1 - full['images_per_s'] / bare):.1f}% of step time")


if __name__ == "__main__":
    main()
