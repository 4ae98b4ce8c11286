"""Pieces every training entry point shares: strategy, tokenizer, models, logger, save."""

from __future__ import annotations

import os
from openrlhf.config.schema import Config


def load_tokenizer(path: str, chat_template: str = "", what: str = "--model.model_name_or_path"):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: cannot load a tokenizer from {path!r}: {e}") from e
    if chat_template:
        tok.chat_template = chat_template
    if tok.pad_token_id is None:
        # Padding positions are masked out everywhere, so any id works; eos is the usual choice.
        tok.pad_token = tok.eos_token
    return tok


def make_strategy(cfg: Config, training: bool = True):
    from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy

    strategy = DeepspeedStrategy(cfg.ds, cfg.train, cfg.max_norm, cfg.adam, training=training)
    strategy.setup_distributed()
    return strategy


def load_actor(strategy, path: str, cfg: Config, *, for_training: bool, offload: bool = False, what: str):
    from openrlhf.models.actor import Actor

    with strategy.model_init_context(for_training=for_training, offload=offload):
        return Actor.from_pretrained(
            path,
            dtype=strategy.torch_dtype,
            attn_implementation=cfg.ds.attn_implementation,
            gradient_checkpointing=for_training and cfg.model.gradient_checkpointing_enable,
            what=what,
        )


def prepare_policy(strategy, cfg: Config, total_steps: int):
    """The trained model as a DeepSpeed engine with its optimizer and LR schedule."""
    actor = load_actor(strategy, cfg.model.model_name_or_path, cfg, for_training=True, what="--model.model_name_or_path")
    optim = strategy.create_optimizer(actor)
    sched = strategy.create_scheduler(optim, cfg.lr_scheduler, cfg.lr_warmup_ratio, total_steps)
    return strategy.prepare_train(actor, optim, sched)


def prepare_frozen(strategy, cfg: Config, path: str, offload: bool, what: str):
    actor = load_actor(strategy, path, cfg, for_training=False, offload=offload, what=what)
    return strategy.prepare_eval(actor, offload=offload)


def make_run_logger(strategy, cfg: Config):
    from openrlhf.config.parse import config_to_dict, dump_config
    from openrlhf.utils.logging import make_logger

    if strategy.is_rank_0():
        os.makedirs(cfg.ckpt.output_dir, exist_ok=True)
        dump_config(cfg, os.path.join(cfg.ckpt.output_dir, "run_config.yaml"))
    return make_logger(strategy.is_rank_0(), cfg.ckpt.output_dir, cfg.logger, config_to_dict(cfg))


def run_cli(train_fn, task: str, argv=None) -> None:
    """Entry-point body: parse flags for ``task``, run ``train_fn(cfg)``, exit cleanly.

    Bad flags and bad data end the process with exit code 2 and the message alone (no
    traceback); under a multi-process launcher the process then exits at once so no rank
    hangs at teardown.
    """
    import sys

    from openrlhf.config.parse import ConfigError, load_config
    from openrlhf.datasets.loading import DataError
    from openrlhf.utils.distributed import exit_cleanly

    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv, task=task)
        train_fn(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        exit_cleanly(2)
        sys.exit(2)
    exit_cleanly()
