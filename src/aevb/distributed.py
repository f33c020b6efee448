"""Data-parallel training on torch.distributed: process-group setup from torchrun's environment and the few
collectives the trainer needs (decisions all ranks must share, bytes read by rank 0, RNG states gathered to rank 0).

`aevb train` calls `setup()`: under `torchrun --nproc_per_node=N -m aevb train ...` (WORLD_SIZE > 1 in the
environment) it joins the process group, gloo on CPU and NCCL on CUDA (one GPU per local rank), with a timeout
so that a rank that dies or stalls makes the others fail instead of waiting forever. Without torchrun it does
nothing and every helper here degrades to the single-process case.
"""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0
_joined = False  # whether this process joined a process group (setup() did), for end_process()


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank, number of processes, rank on this node, collective device."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def current() -> World:
    """The World of an initialized default process group (a World of one otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), device)


def launched() -> bool:
    """True when started by torchrun (or any launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def setup(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[World, torch.device]:
    """Join the process group described by torchrun's environment; returns (world, training device).

    CPU training uses gloo; CUDA training uses NCCL with the GPU `LOCAL_RANK` of this node. A no-op returning
    (World(), device) when WORLD_SIZE is 1 or unset.
    """
    if not launched():
        return World(), device
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"--device {device}: data-parallel training supports cpu (gloo) and cuda (nccl)")
    if not dist.is_initialized():
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kw)
    global _joined
    _joined = True
    return current(), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_process(code: int) -> int:
    """Return `code`, or, in a process that joined a process group, end it now with that exit status.

    A process of a torchrun job must not reach interpreter finalization: the worker threads of gloo outlive
    destroy_process_group (DistributedDataParallel keeps the group referenced from C++), and a worker that drops
    the tensors of a finished collective while the interpreter finalizes takes the GIL from a finalizing
    interpreter, which aborts the process (std::terminate, SIGABRT, after every file of the run was written). So
    such a process flushes stdout and stderr and leaves with os._exit; every file the command writes is complete
    and closed before this point. Other processes return `code`.
    """
    if not _joined:
        return code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


# -- collectives ------------------------------------------------------------------------------------------------
def agree_max(values: list[float], world: World) -> list[float]:
    """Element-wise maximum over all ranks (one small all-reduce): shared yes/no decisions."""
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float32, device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def broadcast_floats(values: list[float], world: World) -> list[float]:
    """Rank 0's values on every rank."""
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.broadcast(t, 0)
    return t.tolist()


def share_from_main(produce, world: World, error_types: tuple = (Exception,)):
    """Run `produce()` on rank 0 and give its bytes to every rank (None stays None).

    An exception of `error_types` on rank 0 is raised again, with its message, on every rank, so that a bad run
    folder gives every process the same one-line error instead of leaving the others waiting.
    """
    if world.size == 1:
        return produce()
    payload, kind = b"", 0  # kind: 0 bytes, 1 None, 2 error
    error = None
    if world.main:
        try:
            data = produce()
            payload, kind = (b"", 1) if data is None else (bytes(data), 0)
        except error_types as e:
            error = e
            payload, kind = str(e).encode(), 2
    header = torch.tensor([len(payload), kind], dtype=torch.int64, device=world.device)
    dist.broadcast(header, 0)
    n, kind = (int(v) for v in header.tolist())
    buf = (torch.frombuffer(bytearray(payload), dtype=torch.uint8) if world.main and n
           else torch.empty(n, dtype=torch.uint8))
    if n:
        buf = buf.to(world.device)
        dist.broadcast(buf, 0)
    data = buf.cpu().numpy().tobytes() if n else b""
    if kind == 2:
        if error is not None:
            raise error
        raise error_types[0](data.decode())
    return None if kind == 1 else data


def run_on_main(action, world: World, error_types: tuple = (Exception,)) -> None:
    """Run `action()` on rank 0 only; an error of `error_types` there is raised on every rank."""
    share_from_main(lambda: (action(), b"")[1], world, error_types)


def gather_to_main(tensor: torch.Tensor, world: World) -> list[torch.Tensor] | None:
    """Every rank's uint8 `tensor` (same size on all ranks) on rank 0, in rank order; None on other ranks."""
    if world.size == 1:
        return [tensor]
    t = tensor.to(world.device)
    parts = [torch.empty_like(t) for _ in range(world.size)]
    dist.all_gather(parts, t)  # all_gather rather than gather: NCCL and gloo both have it
    return [p.cpu() for p in parts] if world.main else None
