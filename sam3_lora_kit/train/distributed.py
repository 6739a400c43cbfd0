"""Data-parallel training over ``torchrun`` processes: init from the environment, one gradient all-reduce.

Each process trains on its own slice of every micro-batch (``EpochSampler``). After the
micro-batches of a step, the gradients of the trainable tensors (the LoRA factors: small) are
averaged across processes in one flat all-reduce, with the summed loss and a "non-finite" flag
riding along, so every rank takes the same optimizer step and stops together. This is what
``DistributedDataParallel`` does for these tensors, without its hooks: those clash with ``sam3``'s
activation checkpointing and with parameters a step leaves unused. Only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "shutdown_distributed", "all_reduce_step", "broadcast_parameters", "all_agree"]


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module initialised the process group and will destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), else a single process.

    The backend is NCCL on CUDA and gloo elsewhere. An already initialised group is reused.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), owns_group=True)


def shutdown_distributed(info: DistInfo) -> None:
    """Destroy the process group if ``init_distributed`` made it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Copy rank 0's trainable tensors to every rank (identical starting adapters)."""
    if info.enabled:
        with torch.no_grad():
            for param in params:
                dist.broadcast(param.data, src=0)


def all_reduce_step(params: list[torch.nn.Parameter], loss_sum: float, bad: bool, info: DistInfo) -> tuple[float, bool]:
    """Average the gradients of ``params`` across ranks in place; returns the mean ``loss_sum``
    and whether any rank saw a non-finite loss. A no-op on one process."""
    if not info.enabled:
        return loss_sum, bad
    device = params[0].device
    pieces = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device, dtype=p.dtype) for p in params]
    extra = torch.tensor([loss_sum, float(bad)], device=device, dtype=pieces[0].dtype)
    flat = torch.cat(pieces + [extra])  # (total trainable + 2,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for param in params:
        grad = flat[offset: offset + param.numel()].view_as(param)
        if param.grad is None:
            param.grad = grad.clone()
        else:
            param.grad.copy_(grad)
        offset += param.numel()
    return float(flat[-2]), bool(flat[-1] > 0)


def all_agree(ok: bool, info: DistInfo) -> bool:
    """True only if ``ok`` on every rank (so a check that fails on rank 0 stops them all)."""
    if not info.enabled:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0])
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return bool(flag.item() == 0)
