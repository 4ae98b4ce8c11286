"""python -m openrlhf.cli.train_sft --model.model_name_or_path ... --data.dataset ...

Supervised fine-tuning on response tokens (dSFT). See README for the flags.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.config.schema import Config


def train_sft(cfg: Config) -> dict:
    """Train and save; returns the last step's metrics. Tests call this directly."""
    from openrlhf.cli.common import load_tokenizer, make_run_logger, make_strategy, prepare_policy
    from openrlhf.datasets import build_dataset, sft_collate
    from openrlhf.trainer.base import LoopSettings, steps_per_epoch
    from openrlhf.trainer.sft_trainer import SFTTrainer

    # Cheap checks first: tokenizer and data, before any model is loaded.
    tokenizer = load_tokenizer(cfg.model.model_name_or_path, cfg.data.tokenizer_chat_template)
    train_ds = build_dataset("sft", cfg.data, tokenizer, model_path=cfg.model.model_name_or_path)
    eval_ds = build_dataset("sft", cfg.data, tokenizer, dataset=cfg.eval.dataset, split=cfg.eval.split, what="--eval.dataset") if cfg.eval.dataset else None
    n_steps = steps_per_epoch(len(train_ds), cfg.train.batch_size) * cfg.train.max_epochs

    strategy = make_strategy(cfg)
    strategy.print(train_ds.report())
    if eval_ds is not None:
        strategy.print("eval: " + eval_ds.report())
    logger = make_run_logger(strategy, cfg)
    engine = prepare_policy(strategy, cfg, n_steps)
    trainer = SFTTrainer(
        strategy,
        engine,
        tokenizer,
        train_ds,
        lambda items: sft_collate(items, tokenizer.pad_token_id),
        LoopSettings(cfg.train, cfg.eval, cfg.ckpt, cfg.logger, cfg.checkpoint_dir),
        logger,
        eval_dataset=eval_ds,
    )
    last = trainer.fit()
    strategy.save_hf_model(engine, tokenizer, cfg.ckpt.output_dir)
    logger.close()
    return last


def main(argv: Optional[list] = None) -> None:
    from openrlhf.cli.common import run_cli

    run_cli(train_sft, "sft", argv)


if __name__ == "__main__":
    main()
