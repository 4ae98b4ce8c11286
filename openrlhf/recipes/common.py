"""Pieces every recipe shares: the strategy, models as DeepSpeed engines, the run logger."""

from __future__ import annotations

import os

from openrlhf.config.schema import RunConfig, TrainingConfig


def make_strategy(cfg: RunConfig, training: bool = True):
    """A set-up :class:`DeepspeedStrategy` for ``cfg``'s --ds / --train (and, when
    training, --adam / --max_norm) sections."""
    from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy

    if training:
        strategy = DeepspeedStrategy(cfg.ds, cfg.train, cfg.max_norm, cfg.adam, training=True)
    else:
        strategy = DeepspeedStrategy(cfg.ds, cfg.train, training=False)
    strategy.setup_distributed()
    return strategy


def load_actor(strategy, path: str, cfg: RunConfig, *, for_training: bool, offload: bool = False, what: str):
    from openrlhf.models.actor import Actor

    with strategy.model_init_context(for_training=for_training, offload=offload):
        return Actor.from_pretrained(
            path,
            dtype=strategy.torch_dtype,
            attn_implementation=cfg.ds.attn_implementation,
            gradient_checkpointing=for_training and cfg.model.gradient_checkpointing_enable,
            what=what,
        )


def prepare_policy(strategy, cfg: TrainingConfig, total_steps: int):
    """The trained model as a DeepSpeed engine with its optimizer and LR schedule."""
    actor = load_actor(strategy, cfg.model.model_name_or_path, cfg, for_training=True, what="--model.model_name_or_path")
    optim = strategy.create_optimizer(actor)
    sched = strategy.create_scheduler(optim, cfg.lr_scheduler, cfg.lr_warmup_ratio, total_steps)
    return strategy.prepare_train(actor, optim, sched)


def prepare_frozen(strategy, cfg: RunConfig, path: str, offload: bool, what: str):
    """A frozen model (reference / teacher) as an inference engine that follows the ZeRO stage."""
    actor = load_actor(strategy, path, cfg, for_training=False, offload=offload, what=what)
    return strategy.prepare_eval(actor, offload=offload)


def make_run_logger(strategy, cfg: TrainingConfig):
    """metrics.jsonl (+ tensorboard / wandb) in --ckpt.output_dir on rank 0, a no-op elsewhere;
    also writes the resolved run_config.yaml."""
    from openrlhf.config.parse import config_to_dict, dump_config
    from openrlhf.utils.logging import make_logger

    if strategy.is_rank_0():
        os.makedirs(cfg.ckpt.output_dir, exist_ok=True)
        dump_config(cfg, os.path.join(cfg.ckpt.output_dir, "run_config.yaml"))
    return make_logger(strategy.is_rank_0(), cfg.ckpt.output_dir, cfg.logger, config_to_dict(cfg))


def loop_settings(cfg: TrainingConfig):
    from openrlhf.trainer.base import LoopSettings

    return LoopSettings(cfg.train, cfg.eval, cfg.ckpt, cfg.logger, cfg.checkpoint_dir)
