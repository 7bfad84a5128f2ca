"""Multi-process training under torchrun: process group, per-rank device, rank-0 duties.

`torchrun --nproc_per_node=N -m genlab train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; genlab
then joins a process group (NCCL on CUDA, gloo on CPU) and wraps each network in
DistributedDataParallel. In a SLURM job of several tasks started by submitit
(`hydra/launcher=slurm_multigpu`), the same variables come from SLURM's through submitit's
`TorchDistributedEnvironment`. Without those variables everything here is a no-op.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes logs, grids and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start(device: torch.device) -> tuple[Processes, torch.device]:
    """Join the process group torchrun (or submitit's SLURM tasks) describe, if any; return it
    and this rank's device."""
    from_submitit_tasks()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(), device
    procs = Processes(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"multi-process training runs on cuda or cpu, not {device.type}")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, **kwargs)
    log.info("rank %d of %d on %s (%s)", procs.rank, world, device, dist.get_backend())
    return procs, device


def from_submitit_tasks() -> None:
    """In a submitit SLURM job of several tasks and no torchrun: torch.distributed's variables
    (MASTER_ADDR and MASTER_PORT: the job's first node and a port drawn from its id; RANK,
    WORLD_SIZE, LOCAL_RANK) from SLURM's, as submitit's own helper sets them."""
    if "WORLD_SIZE" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def stop(finished: bool = False) -> None:
    """Leave the process group. A finished run first waits for every rank: a rank that tears
    down its gloo connections while another still writes the run's last files can abort."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


# Buffers are synced once at the start, not at every forward: that in-place write to BatchNorm
# statistics breaks the generator's backward through D (each process keeps its own statistics).
_NO_FORWARD_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}  # torch < 2.14
)


def wrapper(device: torch.device) -> Callable[[nn.Module], nn.Module]:
    """Wraps one network in DistributedDataParallel."""

    def wrap(module: nn.Module) -> nn.Module:
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, **_NO_FORWARD_SYNC)

    return wrap


def broadcast(obj: Any, procs: Processes) -> Any:
    """Rank 0's `obj` on every rank."""
    if not procs.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, procs: Processes) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not procs.distributed:
        return [obj]
    out: list[Any] = [None] * procs.world
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, procs: Processes, device: torch.device) -> bool:
    """Whether `flag` is set on any rank (a collective: every rank must call it)."""
    if not procs.distributed:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(t: Tensor) -> Tensor:
    """`t` averaged over the training processes (a collective when distributed; else `t`), for
    state every rank must hold alike, such as running averages kept outside a wrapped network."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()
