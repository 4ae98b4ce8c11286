"""One validation pass over a :class:`Config`: every problem, each naming its flag.

Checks are cheap and local: values, ranges, conflicts, and whether local-looking
paths exist. The world-size divisibility of the batch is checked by the strategy.
"""

from __future__ import annotations

import dataclasses
import os
import string
from typing import List

from openrlhf.config.schema import Config, TeacherConfig

TASKS = ("sft", "dpo", "dadpo", "score_logps", "generate", "prune")
# Tasks that build an optimizer (the others only read --train.micro_batch_size / seed).
TRAINING_TASKS = ("sft", "dpo", "dadpo")
LR_SCHEDULERS = ("cosine_with_min_lr", "cosine", "linear", "constant", "constant_with_warmup")
PARAM_DTYPES = ("bf16", "fp16", "fp32")
PRUNE_METHODS = ("activation", "weight")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
_LOCAL_PREFIXES = ("/", "./", "../", "~")
_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub name like ``Qwen/Qwen2.5-1.5B``."""
    return path.startswith(_LOCAL_PREFIXES) or path.endswith(_LOCAL_SUFFIXES)


def _template_problem(template: str) -> str:
    """'' if ``template.format(prompt)`` fills exactly one ``{}``, else the reason."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        return f"not a valid format string ({e}; write a literal brace as {{{{ or }}}})"
    if fields != [""]:
        return f"must contain exactly one '{{}}' (the prompt), found fields {fields!r}"
    return ""


def validate(cfg: Config, task: str, *, check_paths: bool = True, check_packages: bool = True) -> List[str]:
    """Every problem with ``cfg`` for ``task`` (one of :data:`TASKS`); [] if none.

    ``check_paths``: local-looking paths must exist. ``check_packages``: the optional
    packages the settings need (flash-attn, vllm, tensorboard, wandb) must be installed.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    p: List[str] = []

    def need(ok: bool, flag: str, msg: str) -> None:
        if not ok:
            p.append(f"--{flag}: {msg}")

    m, d, t, a = cfg.model, cfg.data, cfg.train, cfg.adam

    # What to train on.
    need(bool(m.model_name_or_path), "model.model_name_or_path", "required (an HF hub name or a local folder)")
    need(bool(d.dataset), "data.dataset", "required (an HF hub name, a local folder or a .json/.jsonl/.parquet file)")
    need(d.max_len >= 8, "data.max_len", f"must be >= 8, got {d.max_len}")
    need(d.max_samples == -1 or d.max_samples >= 1, "data.max_samples",
         f"must be -1 (all) or >= 1, got {d.max_samples}")
    if d.input_template:
        reason = _template_problem(d.input_template)
        need(not reason, "data.input_template", reason)
    need(not (d.apply_chat_template and d.input_template), "data.input_template",
         "conflicts with --data.apply_chat_template (use one way to format prompts, not both)")
    need(not d.tokenizer_chat_template or d.apply_chat_template, "data.tokenizer_chat_template",
         "set but --data.apply_chat_template is false, so it would be unused")

    # Batches, optimizer, schedule.
    need(t.micro_batch_size >= 1, "train.micro_batch_size", f"must be >= 1, got {t.micro_batch_size}")
    if t.batch_size < 1:
        p.append(f"--train.batch_size: must be >= 1, got {t.batch_size}")
    elif t.micro_batch_size >= 1 and t.batch_size % t.micro_batch_size and task in TRAINING_TASKS:
        p.append(f"--train.batch_size: {t.batch_size} is not a multiple of "
                 f"--train.micro_batch_size {t.micro_batch_size}")
    need(t.max_epochs >= 1, "train.max_epochs", f"must be >= 1, got {t.max_epochs}")
    need(a.lr > 0, "adam.lr", f"must be > 0, got {a.lr}")
    need(all(0 <= b < 1 for b in a.betas), "adam.betas", f"each must be in [0, 1), got {list(a.betas)}")
    need(a.weight_decay >= 0, "adam.weight_decay", f"must be >= 0, got {a.weight_decay}")
    need(0 <= cfg.lr_warmup_ratio <= 1, "lr_warmup_ratio", f"must be in [0, 1], got {cfg.lr_warmup_ratio}")
    need(cfg.max_norm >= 0, "max_norm", f"must be >= 0 (0: no clipping), got {cfg.max_norm}")
    need(cfg.lr_scheduler in LR_SCHEDULERS, "lr_scheduler",
         f"unknown scheduler {cfg.lr_scheduler!r}; expected one of {', '.join(LR_SCHEDULERS)}")

    # DeepSpeed.
    need(cfg.ds.zero_stage in (0, 1, 2, 3), "ds.zero_stage", f"must be 0, 1, 2 or 3, got {cfg.ds.zero_stage}")
    need(cfg.ds.param_dtype in PARAM_DTYPES, "ds.param_dtype",
         f"unknown dtype {cfg.ds.param_dtype!r}; expected one of {', '.join(PARAM_DTYPES)}")
    need(cfg.ds.attn_implementation in ATTN_IMPLEMENTATIONS, "ds.attn_implementation",
         f"unknown {cfg.ds.attn_implementation!r}; expected one of {', '.join(ATTN_IMPLEMENTATIONS)}")

    # Evaluation, checkpoints, logging.
    need(cfg.eval.steps == -1 or cfg.eval.steps >= 1, "eval.steps",
         f"must be -1 (end of each epoch) or >= 1, got {cfg.eval.steps}")
    need(cfg.ckpt.save_steps == -1 or cfg.ckpt.save_steps >= 1, "ckpt.save_steps",
         f"must be -1 (never) or >= 1, got {cfg.ckpt.save_steps}")
    need(cfg.ckpt.max_num >= 1, "ckpt.max_num", f"must be >= 1, got {cfg.ckpt.max_num}")
    need(cfg.logger.logging_steps >= 1, "logger.logging_steps", f"must be >= 1, got {cfg.logger.logging_steps}")

    # Preference losses.
    if task in ("dpo", "dadpo"):
        need(m.beta >= 0, "model.beta", f"must be >= 0, got {m.beta}")
        if task == "dpo":
            need(m.beta != 0, "model.beta", "must be > 0 for DPO (beta 0 gives a constant loss)")
        else:
            need(not m.ipo_enable, "model.ipo_enable", "train_dadpo has no IPO form; the daDPO loss is the sigmoid one")
        need(0 <= m.label_smoothing < 0.5, "model.label_smoothing", f"must be in [0, 0.5), got {m.label_smoothing}")
        need(m.nll_loss_coef >= 0, "model.nll_loss_coef", f"must be >= 0, got {m.nll_loss_coef}")
        need(not (m.ipo_enable and m.label_smoothing > 0), "model.label_smoothing",
             "conflicts with --model.ipo_enable (IPO has no label smoothing; set it to 0)")
    if task == "dadpo":
        need(bool(cfg.teacher.model_name_or_path), "teacher.model_name_or_path", "required for daDPO")
        need(cfg.teacher.beta >= 0, "teacher.beta", f"must be >= 0, got {cfg.teacher.beta}")
        need(not (m.beta == 0 and cfg.teacher.beta == 0), "teacher.beta",
             "--model.beta and --teacher.beta are both 0: the loss would be constant")
    if task == "score_logps":
        need(bool(cfg.teacher.model_name_or_path or cfg.ref.model_name_or_path), "teacher.model_name_or_path",
             "score_logps needs a model to score: --teacher.model_name_or_path and/or --ref.model_name_or_path")
    if task == "dpo":
        default = TeacherConfig()
        for f in dataclasses.fields(TeacherConfig):
            need(getattr(cfg.teacher, f.name) == getattr(default, f.name), f"teacher.{f.name}",
                 "only train_dadpo uses --teacher.*")

    if task == "generate":
        g = cfg.generate
        need(g.backend in ("hf", "vllm"), "generate.backend", f"unknown backend {g.backend!r}; expected hf or vllm")
        need(bool(g.output_path), "generate.output_path", "required (the output .jsonl file)")
        need(g.max_new_tokens >= 1, "generate.max_new_tokens", f"must be >= 1, got {g.max_new_tokens}")
        need(g.temperature >= 0, "generate.temperature", f"must be >= 0 (0: greedy), got {g.temperature}")
        need(0 < g.top_p <= 1, "generate.top_p", f"must be in (0, 1], got {g.top_p}")
        need(g.top_k == -1 or g.top_k >= 1, "generate.top_k", f"must be -1 (off) or >= 1, got {g.top_k}")
        need(g.batch_size >= 1, "generate.batch_size", f"must be >= 1, got {g.batch_size}")
        need(g.tp_size >= 1, "generate.tp_size", f"must be >= 1, got {g.tp_size}")
        need(g.num_engines >= 1, "generate.num_engines", f"must be >= 1, got {g.num_engines}")
        need(0 < g.gpu_memory_utilization <= 1, "generate.gpu_memory_utilization",
             f"must be in (0, 1], got {g.gpu_memory_utilization}")

    if task == "prune":
        pr = cfg.prune
        need(0 <= pr.mlp_ratio < 1, "prune.mlp_ratio", f"must be in [0, 1), got {pr.mlp_ratio}")
        need(0 <= pr.head_ratio < 1, "prune.head_ratio", f"must be in [0, 1), got {pr.head_ratio}")
        need(pr.num_layers >= 0, "prune.num_layers", f"must be >= 0, got {pr.num_layers}")
        need(pr.method in PRUNE_METHODS, "prune.method",
             f"unknown method {pr.method!r}; expected one of {', '.join(PRUNE_METHODS)}")
        need(pr.calibration_samples >= 1, "prune.calibration_samples", f"must be >= 1, got {pr.calibration_samples}")
        need(bool(pr.output_dir), "prune.output_dir", "required (the folder the pruned model is written to)")

    if check_packages:
        from openrlhf.utils.errors import missing_package

        # (import name, needed?, flag, feature named in the message)
        wanted = [("flash_attn", cfg.ds.attn_implementation == "flash_attention_2", "ds.attn_implementation",
                   "--ds.attn_implementation flash_attention_2"),
                  ("tensorboard", bool(cfg.logger.tensorboard_dir), "logger.tensorboard_dir", "tensorboard logging"),
                  ("wandb", bool(cfg.logger.wandb.project), "logger.wandb.project", "wandb logging"),
                  ("vllm", task == "generate" and cfg.generate.backend == "vllm", "generate.backend",
                   "--generate.backend vllm")]
        for module, used, flag, feature in wanted:
            err = missing_package(module, feature) if used else None
            need(err is None, flag, str(err))

    # Local-looking paths must exist (hub names are left to the loaders).
    if check_paths:
        paths = [("model.model_name_or_path", m.model_name_or_path), ("ref.model_name_or_path",
                 cfg.ref.model_name_or_path), ("data.dataset", d.dataset), ("eval.dataset", cfg.eval.dataset)]
        if task != "dpo":  # under dpo a teacher is already an error
            paths.append(("teacher.model_name_or_path", cfg.teacher.model_name_or_path))
        for flag, path in paths:
            if path and _looks_local(path) and not os.path.exists(os.path.expanduser(path)):
                p.append(f"--{flag}: file or folder not found: {path}")
    return p
