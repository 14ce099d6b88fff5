"""The process group as the rest of the code sees it: rank, world size, device.

A single process needs no ``init_process_group``; under ``torchrun`` (WORLD_SIZE > 1 in
the environment) the group is initialised with NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a per-rank scalar over all ranks (each rank's loss is the mean of its own rows)."""
        if not self.enabled:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise ConfigError(f"--device must be auto, cpu or cuda; got {name!r}")
    return torch.device("cpu")


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the torchrun process group when launched by torchrun; otherwise a no-op."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun's agent
        watch_launcher(int(os.environ.get("RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def watch_launcher(rank: int, interval: float = 1.0) -> None:
    """Stop this worker within seconds once torchrun's agent, its parent, is gone.

    A scheduler that pre-empts a job kills the agent; its workers are re-parented and would
    otherwise go on training (and holding GPUs) until a collective times out, minutes later.
    """
    import sys
    import threading
    import time

    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(interval)
        sys.stderr.write(f"error: rank {rank}: the torchrun launcher (pid {launcher}) is gone; this worker stops "
                         "(resume from the run's last checkpoint with --resume)\n")
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's rows; the backward sums the gradient of each rank's slice.

    The sum is multiplied by the world size because DDP then *averages* the backbone's
    gradients over ranks: together they give the exact gradient of the global-mean loss.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world_size, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows, ctx.world_size = rank, tensor.shape[0], world_size
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows] * ctx.world_size


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Rows of every rank, in rank order (equal row counts per rank); identity in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllGather.apply(tensor)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Rows of every rank, in rank order, without gradient (labels, generated weights)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
