"""DistributedDataParallel overhead: 1 process x 2 threads against 2 processes x 1 thread.

Both train the same ResNet18 step (forward, backward, SGD) on the same global batch of random
images, as `camlens train` does under torchrun: each of 2 processes takes half the batch and
DDP averages the gradients. The communication share of a step is 1 - t(no_sync) / t(step):
the time the gradient all-reduce adds beyond what overlaps with the backward pass. On 2 CPU
cores the point is the measured overhead, not a speed-up: both modes use the same 2 cores.

    python benchmarks/ddp_speed.py [--steps 10] [--batch-size 128] [--width 64]
    python benchmarks/ddp_speed.py --device cuda      # one GPU: no DDP, then DDP + NCCL, 1 process

Each mode runs in its own processes (torchrun for DDP), launched from here; the figures are
printed side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

from camlens.model import ResNet18


def worker(args: argparse.Namespace) -> None:
    """One mode's processes: time `--steps` steps with and without the gradient all-reduce."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ddp = "RANK" in os.environ
    if ddp:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=10))
    world, rank = (dist.get_world_size(), dist.get_rank()) if ddp else (1, 0)
    torch.manual_seed(0)
    model = ResNet18(10, width=args.width).to(device).to(memory_format=torch.channels_last)
    stepper = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    local = args.batch_size // world
    x = torch.rand(local, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (local,), device=device)

    def step() -> None:
        loss = F.cross_entropy(stepper(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(sync: bool) -> float:
        for _ in range(2):  # warm-up: allocator, DDP's bucket rebuild after the first step
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            if sync or not ddp:
                step()
            else:
                with stepper.no_sync():  # the same step without the all-reduce
                    step()
        if ddp:  # the slowest rank sets the pace
            dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    t_step = timed(sync=True)
    t_local = timed(sync=False) if ddp else t_step
    if rank == 0:
        print(
            json.dumps(
                {
                    "world": world,
                    "threads": args.threads,
                    "backend": dist.get_backend() if ddp else None,
                    "step_s": t_step,
                    "img_per_s": args.batch_size / t_step,
                    "comm_share": 1 - t_local / t_step,
                }
            ),
            flush=True,
        )
    if ddp:
        dist.destroy_process_group()


def launch(args: argparse.Namespace, procs: int, threads: int, ddp: bool) -> dict:
    me = [__file__, "--worker", "--threads", str(threads), "--device", args.device]
    me += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    me += ["--width", str(args.width)]
    cmd = [sys.executable, *me]
    if ddp:
        run = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        cmd = [sys.executable, *run, *me]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps timed in each mode")
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--width", type=int, default=64, help="64: the standard ResNet18")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.device == "cpu":
        modes = [
            ("1 process x 2 threads", 1, 2, False),
            ("2 processes x 1 thread (gloo)", 2, 1, True),
        ]
    else:
        modes = [("1 process, no DDP", 1, 1, False), ("1 process, DDP + NCCL", 1, 1, True)]
    print(f"ResNet18 width {args.width}, global batch {args.batch_size}, fp32, {args.steps} steps")
    first = None
    for name, procs, threads, ddp in modes:
        r = launch(args, procs, threads, ddp)
        first = first or r
        print(
            f"{name:<30} {r['img_per_s']:8.1f} img/s  {1000 * r['step_s']:8.1f} ms/step  "
            f"communication {100 * r['comm_share']:5.1f}% of a step  "
            f"x{r['img_per_s'] / first['img_per_s']:.2f} of the first"
        )


if __name__ == "__main__":
    main()
