"""Data-parallel pre-training on PyTorch DDP, launched by `torchrun` (or a Kubeflow Trainer v2
TrainJob, which sets the same environment variables). One process per GPU; a single process when the
launcher's variables are absent.

Contrastive losses need every sample of the *global* batch as a negative, so the projected
features (with their labels and ExCon's background flags) are gathered from all ranks with
gradient: two ranks with B images each compute the loss one process computes on 2B.
`train.batch_size` is the global batch; each rank draws batch_size / world_size images.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.distributed as dist

# all_gather with autograd lives here; `import torch.distributed` alone does not load it
import torch.distributed.nn.functional

from excon.config import ConfigError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs; the others only train."""
        return self.rank == 0


def launched() -> Context:
    """The process's place in the job, from torchrun's environment variables."""
    try:
        return Context(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as e:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e})") from None


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group when launched by torchrun: NCCL with one GPU per process, gloo on
    CPU. Returns the context and this process's device."""
    ctx = launched()
    if not ctx.enabled:
        return ctx, device
    if device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        device = torch.device("cuda", ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """x from every rank concatenated along dim 0, in rank order; sizes may differ (ExCon appends
    a different number of backgrounds on each rank). Gradients flow back to each rank's part.
    Without a process group: x itself."""
    if not active():
        return x
    if x.dtype == torch.bool:  # gloo cannot gather bool tensors
        return gather_with_grad(x.to(torch.uint8)).bool()
    sizes = [
        torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())
    ]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    counts = [int(s.item()) for s in sizes]
    padded = x
    if x.shape[0] < max(counts):  # all_gather needs equal shapes: pad, then cut each part
        padded = torch.cat([x, x.new_zeros(max(counts) - x.shape[0], *x.shape[1:])])
    with warnings.catch_warnings():
        # torch 2.14 marks this public autograd-aware gather deprecated in favour of a private
        # module (_functional_collectives); keep the public one, without a warning per step.
        warnings.simplefilter("ignore", FutureWarning)
        parts = torch.distributed.nn.functional.all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])


def reduce_over_ranks(
    values: dict[str, torch.Tensor], summed: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """Per-rank statistics for the whole job: the mean over ranks (losses are already global,
    accept rates are per-rank means of equal shards), except `summed` keys, counts, which add up."""
    if not active() or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].float() for k in keys])
    dist.all_reduce(stacked)
    world = dist.get_world_size()
    return {k: v if k in summed else v / world for k, v in zip(keys, stacked, strict=True)}


def check_same_on_all_ranks(value: int, what: str, device: torch.device) -> None:
    """Raise on every rank when ranks disagree on `value` (e.g. the epoch they resume after):
    carrying on would pair mismatched collectives and hang or train garbage."""
    if not active():
        return
    values = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(values, torch.tensor([value], device=device))
    seen = [int(v.item()) for v in values]
    if len(set(seen)) > 1:
        raise RuntimeError(
            f"ranks disagree on {what}: {seen} (rank order); every process must see the same "
            "checkpoint (rank 0's), so restore it on every node before starting"
        )


def per_rank_batch(global_batch: int, ctx: Context) -> int:
    if global_batch % ctx.world_size:
        raise ConfigError(
            f"train.batch_size={global_batch} (the global batch) must be divisible by the "
            f"number of processes ({ctx.world_size})"
        )
    return global_batch // ctx.world_size


def barrier() -> None:
    if active():
        dist.barrier()
