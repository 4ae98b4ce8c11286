"""DeepSpeed config dicts built from our typed config. Pure functions, no deepspeed import."""

from __future__ import annotations

from typing import Any, Dict, List

# --ds.param_dtype (and evaluate / convert_gguf --dtype) -> torch dtype name (re-exported by config.schema;
# utils/dtypes.py maps them to torch dtypes).
PARAM_DTYPES: Dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# --lr_scheduler: the schedulers optim.create_scheduler builds (re-exported by config.schema).
# cosine_with_min_lr decays to min_lr_ratio x lr; cosine and linear decay to 0.
# --lr_scheduler: every name of transformers' get_scheduler (SchedulerType) that steps without a metric;
# cosine_with_min_lr and cosine_warmup_with_min_lr decay to --min_lr_ratio x lr (OpenRLHF's special case),
# warmup_stable_decay too, over the last 10% of the steps; cosine and linear decay to 0.
LR_SCHEDULERS = (
    "cosine_with_min_lr",
    "cosine",
    "linear",
    "constant",
    "constant_with_warmup",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
# SchedulerType names refused, with the reason.
LR_SCHEDULERS_REFUSED = {
    "reduce_lr_on_plateau": "it steps on a validation metric, and the optimizer step has none to give it",
    "greedy": "it steps on a validation metric, and the optimizer step has none to give it",
}

# Large enough that DeepSpeed never prints its own step logs.
_STEPS_PER_PRINT = 10**12


def _precision(param_dtype: str) -> Dict[str, Any]:
    return {
        "bf16": {"enabled": param_dtype == "bf16"},
        "fp16": {"enabled": param_dtype == "fp16"},
    }


def _batch(micro_batch_size: int, accumulated_gradient: int, world_size: int) -> Dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulated_gradient,
        "train_batch_size": micro_batch_size * accumulated_gradient * world_size,
    }


def _common(
    ds, zero: Dict[str, Any], micro_batch_size: int, accumulated_gradient: int, world_size: int
) -> Dict[str, Any]:
    """What training and frozen engines share: ZeRO section, precision, batch, no monitors."""
    cfg: Dict[str, Any] = {
        "steps_per_print": _STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
        "zero_optimization": zero,
        "wandb": {"enabled": False},
        "tensorboard": {"enabled": False},
        "csv_monitor": {"enabled": False},
    }
    cfg.update(_precision(ds.param_dtype))
    cfg.update(_batch(micro_batch_size, accumulated_gradient, world_size))
    return cfg


def train_ds_config(
    ds, *, max_norm: float, micro_batch_size: int, accumulated_gradient: int, world_size: int
) -> Dict[str, Any]:
    """Config for the trained model's engine (``deepspeed.initialize`` with an optimizer)."""
    zero: Dict[str, Any] = {
        "stage": ds.zero_stage,
        "offload_optimizer": {"device": "cpu", "pin_memory": True} if ds.adam_offload else {"device": "none"},
        "offload_param": {"device": "none"},
    }
    if ds.zero_stage == 3:
        # We gather weights ourselves when exporting (fp32 stays fp32).
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if ds.overlap_comm:
        zero.update(overlap_comm=True, contiguous_gradients=True)
    cfg = _common(ds, zero, micro_batch_size, accumulated_gradient, world_size)
    cfg.update(gradient_clipping=max_norm, prescale_gradients=False, zero_allow_untested_optimizer=True)
    if ds.grad_accum_dtype:
        cfg["data_types"] = {"grad_accum_dtype": {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}[ds.grad_accum_dtype]}
    if ds.use_universal_ckpt:
        cfg["checkpoint"] = {"load_universal": True}
    return cfg


def eval_ds_config(
    ds, *, offload: bool, micro_batch_size: int, accumulated_gradient: int, world_size: int
) -> Dict[str, Any]:
    """Config for a frozen model (reference / teacher).

    ZeRO-3 training -> a ZeRO-3 inference engine that shards the parameters
    (``offload``: the shards live in CPU memory). Any other stage -> stage 0 (full copy on
    every rank; sharding a frozen model needs stage 3).
    """
    stage = 3 if ds.zero_stage == 3 else 0
    zero: Dict[str, Any] = {"stage": stage}
    if stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True} if offload else {"device": "none"}
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return _common(ds, zero, micro_batch_size, accumulated_gradient, world_size)


# ---- the rules that both the config validation and the strategy check (one copy each) ----------------


def batch_problems(train, world: int = 1, processes: str = "") -> List[str]:
    """--train.batch_size (rows per optimizer step, all processes) against --train.micro_batch_size and
    ``world`` processes: a whole number of micro-batches per process and step (with
    --train.dynamic_batch_enable, a whole number of rows per process). ``processes`` names the processes in
    the message; validation checks with 1 (the count is not known yet) or the Ray policy group's size, the
    strategy again once it knows the count."""
    b, m = train.batch_size, train.micro_batch_size
    p: List[str] = []
    if m < 1:
        p.append(f"--train.micro_batch_size: must be >= 1, got {m}")
    if b < 1:
        p.append(f"--train.batch_size: must be >= 1, got {b}")
    if p or world < 1:
        return p
    who = f" x the {world} {processes}" if processes else ""
    if getattr(train, "dynamic_batch_enable", False):
        if b % world:
            p.append(f"--train.batch_size: {b} is not a multiple of the {world} {processes}")
    elif b % (m * world):
        p.append(
            f"--train.batch_size: {b} is not a multiple of --train.micro_batch_size {m}{who}"
            + (f" = {m * world}" if processes else "")
        )
    return p


def scheduler_problems(name: str, warmup_ratio: float, min_lr_ratio: float) -> List[str]:
    """--lr_scheduler, --lr_warmup_ratio, --min_lr_ratio (also checked by the strategy's scheduler factory)."""
    p: List[str] = []
    if name in LR_SCHEDULERS_REFUSED:
        p.append(f"--lr_scheduler: {name!r} is not supported: {LR_SCHEDULERS_REFUSED[name]}")
    elif name not in LR_SCHEDULERS:
        p.append(f"--lr_scheduler: unknown scheduler {name!r}; expected one of {', '.join(LR_SCHEDULERS)}")
    if not 0 <= warmup_ratio <= 1:
        p.append(f"--lr_warmup_ratio: must be in [0, 1], got {warmup_ratio}")
    if not 0 <= min_lr_ratio <= 1:
        p.append(f"--min_lr_ratio: must be in [0, 1], got {min_lr_ratio}")
    return p
