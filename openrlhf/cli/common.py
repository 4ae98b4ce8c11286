"""Pieces every training entry point shares: strategy, tokenizer, models, logger, save."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, List, Optional

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


def run_main(body: Callable[[], Any]) -> Any:
    """Run a CLI entry point's body and end the process the same way for every CLI.

    A :class:`~openrlhf.utils.errors.UserError` (bad flags, bad data, a missing optional
    package, an unwritable output) prints ``error: <message>`` without a traceback and
    exits with code 2; under a multi-process launcher only rank 0 prints it (every rank
    meets the same error). Ctrl-C exits with code 130. Under a launcher the process then
    exits at once (see :func:`~openrlhf.utils.distributed.exit_cleanly`) so no rank hangs
    at teardown.
    """
    from openrlhf.utils.distributed import exit_cleanly, is_rank_zero_process
    from openrlhf.utils.errors import UserError

    try:
        result = body()
    except UserError as e:
        if is_rank_zero_process():
            print(f"error: {e}", file=sys.stderr, flush=True)
        exit_cleanly(2)
        sys.exit(2)
    except KeyboardInterrupt:
        if is_rank_zero_process():
            print("interrupted", file=sys.stderr, flush=True)
        exit_cleanly(130)
        sys.exit(130)
    exit_cleanly()
    return result


def run_cli(train_fn: Callable[[Config], Any], task: str, argv: Optional[List[str]] = None) -> Any:
    """Entry-point body of a config-driven CLI: parse flags for ``task``, run ``train_fn(cfg)``."""
    from openrlhf.config.parse import load_config

    return run_main(lambda: train_fn(load_config(sys.argv[1:] if argv is None else argv, task=task)))
