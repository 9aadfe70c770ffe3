"""Multi-process training under ``torchrun``: the process group, ranks and the few collectives the engine uses.

``torchrun --nproc_per_node=N -m reid_prune train --config CFG`` starts N copies of
the CLI with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in their environment. :func:`process_group_from_env` turns that
environment into a process group (gloo for CPU tensors, NCCL for CUDA tensors)
and pins each process to GPU ``LOCAL_RANK``. Outside torchrun, or with a world of
one, every function here is a no-op, so the same code runs in one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# Rank 0 evaluates alone while the others wait in a collective, so the timeout must
# cover a full evaluation (the NCCL default of 10 minutes may not on large test sets).
TIMEOUT = timedelta(minutes=30)


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """``LOCAL_RANK`` set by torchrun: this process's index on its machine (0 when absent)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def distributed_context() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0, the only process that logs, shows progress bars and writes files."""
    return distributed_context()[0] == 0


@contextmanager
def process_group_from_env(timeout: timedelta = TIMEOUT) -> Iterator[None]:
    """Initialise the process group torchrun described in the environment, and destroy it on exit.

    With CUDA the group is ``cpu:gloo,cuda:nccl``: NCCL carries CUDA tensors (DDP
    gradients) and gloo CPU tensors (statistics, pruning scores), so ``train.device=cpu``
    also works on a GPU machine. Without CUDA it is gloo. Each process is pinned to
    GPU ``LOCAL_RANK`` when that GPU exists. Does nothing when ``WORLD_SIZE`` is 1
    or a group already exists (the caller then owns it).
    """
    if env_world_size() <= 1 or dist.is_initialized():
        yield
        return
    cuda = torch.cuda.is_available()
    if cuda and local_rank() < torch.cuda.device_count():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout)
    try:
        yield
        # Leave together: a rank that tears its connections down while another still uses them
        # can abort that one at exit (gloo). Not after an error, where the others may never come.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here."""
    if is_distributed():
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the others: for one-time work such as generating a dataset."""
    main = is_main_process()
    if not main:
        barrier()
    try:
        yield
    finally:
        if main:
            barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor, in place, with rank ``src``'s values."""
    if is_distributed():
        for tensor in tensors:
            dist.broadcast(tensor, src=src)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) into every rank's ``module``, in place.

    DDP sends rank 0's buffers to the others at the start of each forward pass, so
    after the last step of an epoch the ranks' statistics differ; this makes the
    ranks' models identical again before hooks score channels or surgery runs.
    """
    broadcast_tensors(module.buffers(), src)


def all_reduce_mean(values: Mapping[str, torch.Tensor | float]) -> dict[str, torch.Tensor | float]:
    """Average each value over all ranks; tensors keep their shape, dtype and device, floats stay floats.

    Used for epoch statistics, and meant for data-driven pruning scores: every rank
    then ranks channels on the same numbers and removes the same ones.
    """
    if not is_distributed():
        return dict(values)
    world = dist.get_world_size()
    out: dict[str, torch.Tensor | float] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            # Reduce in float64 so the average does not depend on the ranks' summation order more than needed.
            total = value.detach().to(torch.float64).clone()
            dist.all_reduce(total)
            out[key] = (total / world).to(value.dtype)
        else:
            total = torch.tensor(float(value), dtype=torch.float64)
            dist.all_reduce(total)
            out[key] = float(total) / world
    return out



def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over all ranks, in place: for parameters DDP does not hold."""
    params = [p for p in params if p.grad is not None]
    if not is_distributed() or not params:
        return
    averaged = all_reduce_mean({str(i): p.grad for i, p in enumerate(params)})
    for i, param in enumerate(params):
        param.grad.copy_(averaged[str(i)])
