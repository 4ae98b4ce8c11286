"""Pieces every recipe shares: the strategy, models as DeepSpeed engines, the run logger."""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from openrlhf.config.parse import config_to_dict, dump_config
from openrlhf.config.schema import RunConfig, TrainingConfig
from openrlhf.datasets.build import build_dataset
from openrlhf.models.actor import Actor
from openrlhf.trainer.base import LoopParts, LoopSettings
from openrlhf.utils.deepspeed import ckpt_io
from openrlhf.utils.deepspeed.offload import offload_host_memory_problem
from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy
from openrlhf.utils.deepspeed.wrapping import unwrap_model
from openrlhf.utils.errors import UserError
from openrlhf.utils.logging import make_logger
from openrlhf.utils.run_folder import RunLock, check_folder, clear_previous_run, take_lock


def make_strategy(cfg: RunConfig, training: bool = True):
    """A set-up :class:`DeepspeedStrategy` for ``cfg``'s --ds / --train (and, when
    training, --adam / --max_norm) sections."""
    if training:
        check_lora_targets(cfg)  # before DeepSpeed starts (peft would only fail once the model is loaded)
        muon = cfg.muon if cfg.optim == "muon" else None
        strategy = DeepspeedStrategy(cfg.ds, cfg.train, cfg.max_norm, cfg.adam, training=True, muon=muon)
    else:
        strategy = DeepspeedStrategy(cfg.ds, cfg.train, training=False)
    strategy.setup_distributed()
    return strategy


def meta_model(path: str, what: str) -> torch.nn.Module:
    """The causal LM of ``path`` built on the meta device from its config (no weights read, no memory);
    a :class:`UserError` naming ``what`` (the flag) when its config cannot be read."""
    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: cannot read the model config of {path!r}: {first}") from None


def frozen_model_bytes(path: str, dtype: torch.dtype, what: str) -> int:
    """Bytes of one copy of a frozen model as :meth:`DeepspeedStrategy.prepare_eval` holds it: its parameters
    (shared ones once) in ``dtype``, its buffers as they are built."""
    model = meta_model(path, what)
    params = sum(p.numel() for p in model.parameters()) * dtype.itemsize
    return params + sum(b.numel() * b.element_size() for b in model.buffers())


def check_offload_fits(strategy, path: str, what: str) -> None:
    """COLLECTIVE. Before a frozen model loads with --ref.offload / --teacher.offload at ZeRO 0-2 (every
    process then keeps its own full copy in CPU memory, pinned on a GPU machine): a :class:`UserError`
    with the numbers when the copies of a node's processes exceed its available memory
    (:func:`~openrlhf.utils.deepspeed.offload.offload_host_memory_problem`)."""
    flag = what.replace(".model_name_or_path", ".offload")
    problem = offload_host_memory_problem(flag, frozen_model_bytes(path, strategy.torch_dtype, what))
    if problem:
        raise UserError(f"{problem} ({what} {path})")


def check_lora_targets(cfg: RunConfig) -> None:
    """With LoRA (``--ds.lora.rank`` > 0) and named ``--ds.lora.target_modules``: every name must match a
    layer of the policy that LoRA can adapt (peft's rule: a module whose dotted name is the target or ends
    in ``.<target>``; a linear, embedding or convolution layer), else a :class:`UserError` listing the names
    the model has. The model is built on the meta device from its config (no weights are read)."""
    if not uses_lora(cfg) or list(cfg.ds.lora.target_modules) == ["all-linear"]:
        return

    path = cfg.model.model_name_or_path
    model = meta_model(path, "--model.model_name_or_path")
    adaptable = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    modules = dict(model.named_modules())
    layers = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in modules.items()
            if name and (isinstance(m, adaptable) or type(m).__name__ == "Conv1D")
        }
    )
    bad = []
    for target in cfg.ds.lora.target_modules:
        hits = [m for name, m in modules.items() if name == target or name.endswith("." + target)]
        if not hits:
            bad.append(f"{target!r} names no module")
        elif not any(isinstance(m, adaptable) or type(m).__name__ == "Conv1D" for m in hits):
            bad.append(f"{target!r} is a {type(hits[0]).__name__}, not a layer LoRA adapts")
    if bad:
        raise UserError(
            f"--ds.lora.target_modules: {'; '.join(bad)} of {path} ({type(model).__name__}); its "
            f"linear / embedding layers are named {', '.join(layers)} (or give all-linear)"
        )


def load_actor(strategy, path: str, cfg: RunConfig, *, for_training: bool, offload: bool = False, what: str):
    """The trained model (``for_training``: gradient checkpointing, MoE aux loss, LoRA, 4-bit, Liger as
    asked) or a frozen one (reference / teacher: plain weights) as an :class:`Actor`."""
    m, ds = cfg.model, cfg.ds
    extra = {}
    if for_training:
        extra = dict(
            gradient_checkpointing=m.gradient_checkpointing_enable,
            gradient_checkpointing_reentrant=m.gradient_checkpointing_reentrant,
            aux_loss_coef=m.aux_loss_coef,
            lora=ds.lora,
            load_in_4bit=ds.load_in_4bit,
            use_liger_kernel=ds.use_liger_kernel,
        )
    with strategy.model_init_context(for_training=for_training, offload=offload):
        return Actor.from_pretrained(
            path,
            dtype=strategy.torch_dtype,
            attn_implementation=ds.attn_implementation,
            experts_implementation=ds.experts_implementation,
            what=what,
            **extra,
        )


class AdapterDisabled:
    """The reference of a LoRA run: the policy engine with its adapters switched off, i.e. the
    frozen base weights (no second copy of the model). Called like a frozen engine."""

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, *args, **kwargs):
        with torch.no_grad(), unwrap_model(self.engine).disable_adapter():
            return self.engine(*args, **kwargs)


def uses_lora(cfg: RunConfig) -> bool:
    return cfg.ds.lora.rank > 0


def check_resume(strategy, cfg: TrainingConfig) -> None:
    """With --ckpt.load_enable: the checkpoint to resume is whole and is this model's (files cut short,
    model or optimizer states missing, another process count, weights of other shapes), before a model loads."""
    if not cfg.ckpt.load_enable:
        return
    shapes = None
    if not uses_lora(cfg):  # a LoRA checkpoint names the adapters' weights its own way
        model = meta_model(cfg.model.model_name_or_path, "--model.model_name_or_path")
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = ckpt_io.resume_problems(
        cfg.checkpoint_dir,
        strategy.world_size,
        optimizer_files=cfg.ds.zero_stage >= 1,
        shapes=shapes,
        universal=cfg.ds.use_universal_ckpt,
    )
    if problems:
        raise UserError("--ckpt.load_enable: the checkpoint cannot be resumed: " + "; ".join(problems))


def prepare_policy(strategy, cfg: TrainingConfig, total_steps: int):
    """The trained model as a DeepSpeed engine with its optimizer and LR schedule (a checkpoint to resume is
    checked first: :func:`check_resume`)."""
    check_resume(strategy, cfg)
    actor = load_actor(
        strategy, cfg.model.model_name_or_path, cfg, for_training=True, what="--model.model_name_or_path"
    )
    return strategy.prepare_trained(
        actor,
        lambda opt: strategy.create_scheduler(
            opt, cfg.lr_scheduler, cfg.lr_warmup_ratio, total_steps, cfg.min_lr_ratio
        ),
    )


def prepare_frozen(strategy, cfg: RunConfig, path: str, offload: bool, what: str):
    """A frozen model (reference / teacher) as an inference engine that follows the ZeRO stage; with
    ``offload`` at ZeRO 0-2, refused before it loads when a copy per process does not fit the node's memory."""
    if offload and cfg.ds.zero_stage != 3:
        check_offload_fits(strategy, path, what)
    actor = load_actor(strategy, path, cfg, for_training=False, offload=offload, what=what)
    return strategy.prepare_eval(actor, offload=offload)


def save_trained(strategy, engine, tokenizer, cfg: TrainingConfig) -> None:
    """The final HF folder in --ckpt.output_dir; with LoRA the adapters go to <output_dir>/adapter and the
    folder holds the merged weights (a normal HF model)."""
    if uses_lora(cfg):
        strategy.save_lora_model(engine, tokenizer, cfg.ckpt.output_dir, cfg.ds.lora.alpha / cfg.ds.lora.rank)
    else:
        strategy.save_hf_model(engine, tokenizer, cfg.ckpt.output_dir)


def sft_datasets(cfg, tokenizer, model_path: str):
    """train_sft / train_kd data: (train dataset, eval dataset or None). Several training sources are
    mixed by --data.dataset_probs with --train.seed; --model.pretrain_mode_enable reads plain text."""
    pretrain = cfg.model.pretrain_mode_enable
    train = build_dataset("sft", cfg.data, tokenizer, model_path=model_path, seed=cfg.train.seed, pretrain=pretrain)
    ev = None
    if cfg.eval.dataset:
        ev = build_dataset(
            "sft",
            cfg.data,
            tokenizer,
            dataset=cfg.eval.dataset,
            split=cfg.eval.split,
            what="--eval.dataset",
            pretrain=pretrain,
        )
    return train, ev


def print_reports(strategy, train_ds, eval_ds) -> None:
    strategy.print(train_ds.report())
    if eval_ds is not None:
        strategy.print("eval: " + eval_ds.report())


# What makes --ckpt.output_dir "hold a run": what a training run writes there (its checkpoints folder is added).
RUN_FILES = ("metrics.jsonl", "run_config.yaml", "config.json", "model.safetensors", "model.safetensors.index.json")


def check_training_output_dir(cfg: TrainingConfig) -> None:
    """Refuse an --ckpt.output_dir that holds a previous run unless --ckpt.load_enable / --ckpt.overwrite
    (cheap: a Ray driver calls it before it places any group)."""
    check_folder(
        cfg.ckpt.output_dir,
        what="--ckpt.output_dir",
        resume=cfg.ckpt.load_enable,
        overwrite=cfg.ckpt.overwrite,
        marker_files=(*RUN_FILES, os.path.abspath(cfg.checkpoint_dir)),
    )


def claim_on_rank_0(strategy, take: Callable[[], RunLock], what: str) -> Optional[RunLock]:
    """``take()`` (the lock of an output folder, :mod:`openrlhf.utils.run_folder`) on rank 0 only, the others
    waiting for its outcome: a refusal there is raised on every rank (the others name ``what``), so no rank
    goes on into a collective that rank 0 never reaches."""
    lock, error = None, None
    if strategy.is_rank_0():
        try:
            lock = take()
        except UserError as e:
            if strategy.world_size == 1:
                raise
            error = e
    if strategy.world_size > 1 and strategy.all_reduce(0.0 if error is None else 1.0, op="max") > 0:
        if error is not None:
            raise error
        raise UserError(f"{what}: rank 0 could not claim the folder (see its message)")
    return lock


def make_run_logger(strategy, cfg: TrainingConfig):
    """metrics.jsonl (+ tensorboard / wandb) in --ckpt.output_dir on rank 0, a no-op elsewhere;
    also writes the resolved run_config.yaml. Before anything is written there, the folder is claimed
    (:mod:`openrlhf.utils.run_folder`): every rank checks that it holds no previous run (unless
    --ckpt.load_enable / --ckpt.overwrite), rank 0 takes its lock, and a refusal on rank 0 stops every rank;
    closing the logger releases the lock."""
    check_training_output_dir(cfg)  # every rank sees the folder as it was before this run wrote anything

    def take() -> RunLock:  # rank 0: the lock, then (--ckpt.overwrite) the previous run's files removed
        lock = take_lock(cfg.ckpt.output_dir, what="--ckpt.output_dir", log=strategy.print)
        if cfg.ckpt.overwrite and not cfg.ckpt.load_enable:
            clear_previous_run(
                cfg.ckpt.output_dir, ("metrics.jsonl", os.path.abspath(cfg.checkpoint_dir)), log=strategy.print
            )
        return lock

    lock = claim_on_rank_0(strategy, take, f"--ckpt.output_dir {cfg.ckpt.output_dir}")
    if strategy.is_rank_0():
        os.makedirs(cfg.ckpt.output_dir, exist_ok=True)
        dump_config(cfg, os.path.join(cfg.ckpt.output_dir, "run_config.yaml"))
    return make_logger(
        strategy.is_rank_0(), cfg.ckpt.output_dir, cfg.logger, config_to_dict(cfg, redact=True), lock=lock
    )


def loop_parts(
    cfg: TrainingConfig, strategy, engine, tokenizer, train, eval_ds, collate, logger, token_counts=None, rounds=None
) -> LoopParts:
    """What the training loop of ``cfg``'s run runs on (its settings and DataLoader workers from ``cfg``)."""
    return LoopParts(
        strategy=strategy,
        engine=engine,
        tokenizer=tokenizer,
        train_dataset=train,
        collate_fn=collate,
        settings=LoopSettings(cfg.train, cfg.eval, cfg.ckpt, cfg.logger, cfg.checkpoint_dir),
        logger=logger,
        eval_dataset=eval_ds,
        num_workers=cfg.data.dataloader_num_workers,
        token_counts=token_counts,
        rounds=rounds,
    )
