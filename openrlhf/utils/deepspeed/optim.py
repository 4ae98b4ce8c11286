"""The optimizer and LR-scheduler factories of a training run (--optim, the --adam.* / --muon.* sections,
--lr_scheduler)."""

from __future__ import annotations

import math
from typing import Any, Dict, List

import torch
import torch.nn as nn
from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
from transformers import get_scheduler

from openrlhf.utils.deepspeed.ds_config import scheduler_problems
from openrlhf.utils.deepspeed.wrapping import unwrap_model
from openrlhf.utils.errors import UserError


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """``model``'s trainable params in two groups: matrices with ``weight_decay``, the rest (biases, norms)
    without."""
    decay, no_decay = [], []
    for p in unwrap_model(model).parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))
        (decay if ndim >= 2 else no_decay).append(p)
    groups = [
        g
        for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def muon_optimizer_config(adam, muon) -> Dict[str, Any]:
    """DeepSpeed's ``optimizer`` config entry for --optim muon: Muon (--muon.lr, --muon.momentum) on the
    matrices DeepSpeed tags (all but embeddings and LM head), its auxiliary AdamW (--adam.*) on the rest."""
    return {
        "type": "Muon",
        "params": {
            "lr": adam.lr,
            "muon_lr": muon.lr,
            "adam_lr": adam.lr,
            "momentum": muon.momentum,
            # the quintic Newton-Schulz iteration of Muon's definition (and of torch.optim.Muon), not DeepSpeed's
            # default Gram variant
            "ns_method": "standard",
            "betas": list(adam.betas),
            "eps": getattr(adam, "eps", 1e-8),
            "weight_decay": adam.weight_decay,
        },
    }


def create_optimizer(model: nn.Module, adam, cpu_offload: bool) -> torch.optim.Optimizer:
    """AdamW over ``model``'s trainable params with the --adam.* settings ``adam``; weight decay only on
    matrices (not biases / norms).

    ``cpu_offload`` (--ds.adam_offload) -> DeepSpeedCPUAdam; else on GPU FusedAdam (torch AdamW when it
    cannot be built); on CPU torch AdamW."""
    groups = param_groups(model, adam.weight_decay)
    kw = dict(lr=adam.lr, betas=tuple(adam.betas), eps=getattr(adam, "eps", 1e-8))
    if cpu_offload:
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kw)
    if torch.cuda.is_available():
        try:
            return FusedAdam(groups, adam_w_mode=True, **kw)
        except Exception:  # op cannot be built here (no nvcc, ...)
            return torch.optim.AdamW(groups, **kw)
    return torch.optim.AdamW(groups, **kw)


def create_scheduler(optimizer, name: str, warmup_ratio: float, total_steps: int, min_lr_ratio: float = 0.1):
    """An LR scheduler stepped once per optimizer step (DeepSpeed steps it).

    Any name of transformers' ``get_scheduler`` that steps without a metric. Warmup steps =
    ceil(warmup_ratio * total_steps). cosine_with_min_lr and cosine_warmup_with_min_lr decay to
    min_lr_ratio x lr (OpenRLHF's special case); warmup_stable_decay decays to min_lr_ratio x lr over
    the last ceil(10%) of the steps (transformers needs a decay length; OpenRLHF gives none);
    cosine and linear decay to 0."""
    problems = scheduler_problems(name, warmup_ratio, min_lr_ratio)
    if problems:
        raise UserError("; ".join(problems))
    if total_steps < 1:
        raise ValueError(f"total optimizer steps must be >= 1 (got {total_steps}); is the dataset empty?")
    warmup = math.ceil(warmup_ratio * total_steps)
    kwargs = None
    if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        kwargs = {"min_lr_rate": min_lr_ratio}
    elif name == "warmup_stable_decay":
        decay = max(1, min(math.ceil(0.1 * total_steps), total_steps - warmup))
        kwargs = {"num_decay_steps": decay, "min_lr_ratio": min_lr_ratio}
    if name == "constant":
        return get_scheduler(name, optimizer)
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=kwargs,
    )
