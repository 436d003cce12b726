"""Multi-process helpers for ``mednca train --distributed`` (launched by ``torchrun``).

``torchrun`` starts one process per device (CPU processes or GPUs, on one or several nodes) and
tells each its place through environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). :func:`init_from_env` reads them and joins the process group:
backend ``gloo`` on CPU, ``nccl`` when CUDA is available.

The collective helpers below (:func:`barrier`, :func:`all_reduce_mean`, :func:`any_true`, ...)
work unchanged in a single process without a process group: they then return their input, so
code calling them needs no special case for the non-distributed path.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from ..errors import MedNCAError

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = ("launch it with torchrun, e.g. 'torchrun --nproc-per-node 2 -m mednca train --distributed "
               "--data DIR --out RUN' (see docs/distributed.md)")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int = 0
    backend: str = "gloo"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """``cuda:LOCAL_RANK`` with NCCL, else the CPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def env_rank() -> int:
    """``RANK`` as set by torchrun (0 when not launched by torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default ``nccl`` if CUDA is available, else ``gloo``.
            If a process group already exists it is reused (and its backend reported).

    Raises:
        MedNCAError: if the variables are missing or malformed (not launched by torchrun).
    """
    if not dist.is_available():
        raise MedNCAError("this PyTorch build has no torch.distributed support")
    missing = [name for name in ENV_VARS if not os.environ.get(name)]
    if missing:
        raise MedNCAError(f"--distributed needs the environment torchrun sets ({', '.join(missing)} "
                          f"missing); {LAUNCH_HINT}")
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise MedNCAError(f"malformed torchrun environment ({exc}); {LAUNCH_HINT}") from None
    if not 0 <= rank < world:
        raise MedNCAError(f"RANK={rank} is not in [0, WORLD_SIZE={world}); {LAUNCH_HINT}")
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, backend)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, and in a process that is not part of a process group.

    After :func:`cleanup` it falls back to torchrun's ``RANK`` variable, so a command can still
    tell whether it is the process that should print its summary.
    """
    return rank() == 0 if is_initialized() else env_rank() == 0


def cleanup(synchronize: bool = True) -> None:
    """Leave the process group (no-op without one).

    Args:
        synchronize: Wait for every rank first (all must call it), so that no rank tears the
            group down while another still uses it. False on an error path, where the other
            ranks may never arrive.
    """
    if is_initialized():
        # DDP's reducer sits in reference cycles: release it while the group is still alive, not
        # at interpreter exit (a rank then aborted now and then: "terminate called without an
        # active exception", SIGABRT, after training had finished)
        gc.collect()
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def _device() -> torch.device:
    """Where collective tensors must live for the current backend."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process gets here."""
    if is_initialized():
        dist.barrier()


def all_reduce_mean(value: float) -> float:
    """The mean of ``value`` over all processes (``value`` itself in a single process)."""
    if not is_initialized():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def all_reduce_max(value: float) -> float:
    """The largest ``value`` over all processes (``value`` itself in a single process)."""
    if not is_initialized():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def any_true(*flags: bool) -> tuple[bool, ...]:
    """Element-wise OR of boolean flags over all processes (one collective for all flags)."""
    if not is_initialized():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def all_true(flag: bool) -> bool:
    """True only if ``flag`` is true on every process."""
    return not any_true(not flag)[0]


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every process (pickled; for small objects)."""
    if not is_initialized():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_device() if _device().type == "cuda" else None)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process (pickled; for small objects)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result (or its error) to every rank."""
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as exc:  # re-raised below on every rank
            error = exc
    shared = error if error is None or isinstance(error, MedNCAError) else \
        MedNCAError(f"rank 0 failed: {type(error).__name__}: {error}")
    result, shared = broadcast_object((result, shared))
    if error is not None:
        raise error
    if shared is not None:
        raise shared
    return result


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share of ``items``: every ``world_size``-th item starting at ``rank``.

    The shards of all ranks are disjoint, cover ``items`` and differ in length by at most one.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(items[rank::world_size])
