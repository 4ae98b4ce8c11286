"""Collectives over the strategy's process group (a no-op without one). torch only, no deepspeed import."""

from __future__ import annotations

import torch
import torch.distributed as dist

_REDUCE_OPS = ("mean", "sum", "max", "min")


def barrier() -> None:
    """Wait for every rank; nothing to wait for without a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (any picklable value); itself without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce(x, op: str, world_size: int, device: torch.device):
    """Reduce a float, a tensor or a (nested) dict of those over ``world_size`` ranks.
    op: mean | sum | max | min. Floats come back as floats, tensors as tensors. ``device``: this rank's
    device, where the reduction runs under nccl (on CPU under gloo)."""
    if op not in _REDUCE_OPS:
        raise ValueError(f"op must be mean, sum, max or min (got {op!r})")
    if isinstance(x, dict):
        return {k: all_reduce(v, op, world_size, device) for k, v in x.items()}
    if not (dist.is_available() and dist.is_initialized()) or world_size == 1:
        return x
    is_tensor = isinstance(x, torch.Tensor)
    t = x.detach().clone() if is_tensor else torch.tensor(float(x), dtype=torch.float64)
    orig_device, orig_dtype = t.device, t.dtype
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    t = t.to(comm_device)
    reduce_op = {
        "mean": dist.ReduceOp.SUM,
        "sum": dist.ReduceOp.SUM,
        "max": dist.ReduceOp.MAX,
        "min": dist.ReduceOp.MIN,
    }[op]
    dist.all_reduce(t, op=reduce_op)
    if op == "mean":
        t = t / world_size
    if is_tensor:
        # Integer tensors keep their dtype except for a mean (which is fractional).
        keep = orig_dtype.is_floating_point or op != "mean"
        return t.to(device=orig_device, dtype=orig_dtype if keep else t.dtype)
    return float(t.item())
