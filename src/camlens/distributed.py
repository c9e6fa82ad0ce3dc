"""Running under torchrun: the process group, who writes, and shards of work gathered back.

camlens does not launch processes; PyTorch's launcher does (`torchrun --nproc_per_node N -m
camlens ...`) and leaves RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each process's
environment. `start(device)` turns that environment into a process group; without it, or
with one process, nothing is initialised and every function here is the one-process identity,
so a plain `camlens train` never touches torch.distributed.

Work on N items is split into contiguous ranges, rank 0 the first: `gather` concatenates the
ranks' results in rank order, which is the order one process would have produced.
Only tensors cross processes (never pickled objects): every collective here is a tensor op.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from camlens.choices import BACKENDS

__all__ = [
    "BACKENDS",
    "DistributedError",
    "all_sum",
    "backend",
    "broadcast_buffers",
    "gather",
    "gather_fields",
    "is_writer",
    "launched",
    "process_group",
    "rank",
    "rank_device",
    "shard",
    "shard_rows",
    "start",
    "stop",
    "world_size",
]


class DistributedError(RuntimeError):
    """A process group that cannot be started as asked (a backend this machine lacks)."""


def launched() -> bool:
    """True inside a torchrun worker of a group of two or more processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def running() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if running() else 0


def world_size() -> int:
    return dist.get_world_size() if running() else 1


def backend() -> str | None:
    """The running group's backend (`gloo`, `nccl`), None in a single process."""
    return str(dist.get_backend()) if running() else None


def is_writer() -> bool:
    """Only rank 0 logs and writes files; a single process always does. Under torchrun this
    holds before the group starts and after it stops too, from torchrun's RANK."""
    if running():
        return dist.get_rank() == 0
    return not launched() or int(os.environ["RANK"]) == 0


def start(device: torch.device, name: str = "auto") -> torch.device:
    """Join torchrun's process group when launched by it; returns the device this rank uses.

    `auto`: NCCL for CUDA, gloo for the CPU. See `rank_device` for the GPU each rank takes.
    """
    if name not in BACKENDS:
        raise DistributedError(f"unknown --backend {name!r}: choose from {', '.join(BACKENDS)}")
    if not launched() or running():
        return device
    if name == "auto":
        name = "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise DistributedError("--backend nccl needs CUDA GPUs: use --backend gloo on the CPU")
    device = rank_device(device, name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    available = {"nccl": dist.is_nccl_available, "gloo": dist.is_gloo_available}[name]
    if not available():
        raise DistributedError(f"this torch build has no {name} backend: try another --backend")
    # a rank that dies leaves the others waiting in a collective; torchrun then stops them
    timeout = timedelta(minutes=10)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and restart != "0":
        # torchrun's restarted workers find the old workers' addresses in the agent's store
        # and fail to connect (pytorch#167288): each restart gets keys of its own
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        store = dist.TCPStore(address, port, world, is_master=False, timeout=timeout)
        store = dist.PrefixStore(f"camlens/restart{restart}", store)
        dist.init_process_group(name, store=store, rank=rank, world_size=world, timeout=timeout)
    else:
        dist.init_process_group(name, timeout=timeout)
    return device


def rank_device(device: torch.device, name: str) -> torch.device:
    """The device of this torchrun rank: with CUDA, the GPU of its LOCAL_RANK (NCCL refuses two
    ranks on one GPU, and `cuda:0` would put them all there); one line when this machine has
    fewer GPUs than ranks. An explicit `cuda:N` stays only with gloo, which lets ranks share
    a GPU (two ranks on one GPU exercise DDP and SyncBatchNorm: benchmarks/gpu_session.sh)."""
    if device.type != "cuda" or (name == "gloo" and device.index is not None):
        return device
    local, ranks = int(os.environ.get("LOCAL_RANK", "0")), os.environ.get("LOCAL_WORLD_SIZE")
    count = torch.cuda.device_count()
    if local >= count:
        many = f"{ranks} processes" if ranks else f"process {local}"
        raise DistributedError(
            f"{many} on this machine but {count} CUDA GPU(s): one GPU per process, so pass "
            f"--nproc-per-node {count} or less (or --backend gloo --device cuda:0 to share one)"
        )
    return torch.device("cuda", local)


def stop() -> None:
    """Leave the process group (a no-op in a single process)."""
    if running():
        dist.destroy_process_group()


@contextmanager
def process_group(device: torch.device, name: str = "auto") -> Iterator[torch.device]:
    """`start` on entry, `stop` on exit: `with process_group(device) as device: ...`."""
    device = start(device, name)
    try:
        yield device
        if running():  # ranks leave together: one tearing gloo down first can abort a peer
            dist.barrier()  # ("terminate called without an active exception", seen once here)
    finally:
        stop()


def shard(n: int, align: int = 1) -> slice:
    """This rank's contiguous share of `range(n)`, cut at multiples of `align`.

    With `align` the batch size, every batch a rank forms is one that a single process would
    have formed, so batch-dependent arithmetic (oneDNN picks kernels by batch) stays the same.
    """
    blocks = -(-n // align)
    world, r = world_size(), rank()
    start, stop = r * blocks // world * align, (r + 1) * blocks // world * align
    return slice(min(start, n), min(stop, n))


def shard_rows(n: int, align: int = 1) -> tuple[slice, int]:
    """`shard(n, align)` and how many of its rows are this rank's own. A rank with no rows gets
    row 0 as a stand-in (count 0): it must still join the gather, with tensors of the right
    trailing shape, which only computing on a real row gives."""
    rows = shard(n, align)
    count = rows.stop - rows.start
    return (rows if count or n == 0 else slice(0, 1)), count


def _comm_device(tensor: torch.Tensor) -> torch.device:
    # NCCL moves only CUDA tensors, gloo CPU (and CUDA) ones
    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over every rank, on every rank (in place, and returned)."""
    if running():
        buf = tensor.to(_comm_device(tensor))
        dist.all_reduce(buf)
        tensor.copy_(buf)
    return tensor


def gather(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's `tensor` concatenated along `dim` in rank order, on every rank.

    Sizes along `dim` may differ (a shard of mistakes); the other dimensions must agree.
    """
    if not running():
        return tensor
    device = _comm_device(tensor)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[dim]], device=device))
    counts = [int(s) for s in sizes]
    # all_gather moves equal shapes: pad each shard to the longest, then cut the padding off
    padded = torch.zeros(
        (*tensor.shape[:dim], max(counts), *tensor.shape[dim + 1 :]),
        dtype=tensor.dtype,
        device=device,
    )
    padded.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p.narrow(dim, 0, c) for p, c in zip(parts, counts, strict=True)], dim).to(
        tensor.device
    )


def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics), so that each rank
    tests the model rank 0 saves."""
    if running():
        for buf in module.buffers():
            data = buf.to(_comm_device(buf))
            dist.broadcast(data, 0)
            buf.copy_(data)


def gather_fields(obj, dims: dict[str, int], count: int | None = None):
    """A copy of the dataclass `obj` whose tensor fields in `dims` are gathered along their dim.

    `count`: the rows this rank contributes, fewer than it holds when it computed a stand-in
    for an empty shard (every rank must join each collective, and with tensors of the same
    trailing shape). None fields stay None.
    """
    if not running():
        return obj
    gathered = {}
    for name, dim in dims.items():
        value = getattr(obj, name)
        if value is not None:
            mine = value if count is None else value.narrow(dim, 0, count)
            gathered[name] = gather(mine, dim)
    return dataclasses.replace(obj, **gathered)
