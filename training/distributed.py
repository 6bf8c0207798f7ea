"""DDP through ``torchrun``: process group setup, sharding and rank-0-only side effects.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them we run single-process.
gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Read torchrun's environment (no process group is created)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Create the process group when launched by torchrun with more than one process."""
    import torch
    import torch.distributed as dist

    info = env_info()
    if not info.enabled:
        return info
    info.backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=info.backend, rank=info.rank, world_size=info.world_size)
    return info


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """Round-robin share of ``range(n)`` for this rank (DistributedSampler-style, no padding).

    With fewer items than ranks every rank keeps all of them, so no rank starves.
    """
    if not info.enabled or n < info.world_size:
        return list(range(n))
    return list(range(info.rank, n, info.world_size))


def wrap_model(model, info: DistInfo, device):
    """DistributedDataParallel when distributed, else the model unchanged."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model):
    return getattr(model, "module", model)


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Average a python float over ranks (validation metrics, losses for logging)."""
    if not info.enabled:
        return float(value)
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    if info.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0 decides (e.g. early stopping); everyone follows."""
    if not info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if info.backend == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def sync_buffers(model, info: DistInfo) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks, broadcast the others.

    DDP broadcasts buffers from rank 0 *before* each forward, but the forward then updates them
    with each rank's local batch, so after the last step the ranks disagree. Called once per epoch
    so validation and checkpoints see one model on every rank.
    """
    if not info.enabled:
        return
    import torch.distributed as dist

    for b in unwrap(model).buffers():
        if b.dtype.is_floating_point:
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(info.world_size)
        else:
            dist.broadcast(b, src=0)
