"""python -m openrlhf.cli.train_dpo --model.model_name_or_path ... --data.dataset ...

DPO / conservative DPO / IPO against a frozen reference. See README for the flags.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.config.schema import Config


def train_dpo(cfg: Config) -> dict:
    """Train and save; returns the last step's metrics. Tests call this directly."""
    from openrlhf.cli.common import load_tokenizer, make_run_logger, make_strategy, prepare_frozen, prepare_policy
    from openrlhf.datasets import build_dataset, preference_collate
    from openrlhf.trainer.base import LoopSettings, steps_per_epoch
    from openrlhf.trainer.dpo_trainer import DPOTrainer, make_dpo_loss

    tokenizer = load_tokenizer(cfg.model.model_name_or_path, cfg.data.tokenizer_chat_template)
    train_ds = build_dataset("preference", cfg.data, tokenizer, model_path=cfg.model.model_name_or_path)
    eval_ds = build_dataset("preference", cfg.data, tokenizer, dataset=cfg.eval.dataset, split=cfg.eval.split, what="--eval.dataset") if cfg.eval.dataset else None
    n_steps = steps_per_epoch(len(train_ds), cfg.train.batch_size) * cfg.train.max_epochs
    loss_fn = make_dpo_loss(cfg.model.beta, cfg.model.label_smoothing, cfg.model.ipo_enable)

    strategy = make_strategy(cfg)
    strategy.print(train_ds.report())
    if eval_ds is not None:
        strategy.print("eval: " + eval_ds.report())
    logger = make_run_logger(strategy, cfg)
    engine = prepare_policy(strategy, cfg, n_steps)
    ref_path = cfg.ref.model_name_or_path or cfg.model.model_name_or_path
    ref_engine = prepare_frozen(strategy, cfg, ref_path, cfg.ref.offload, what="--ref.model_name_or_path")
    trainer = DPOTrainer(
        strategy,
        engine,
        tokenizer,
        train_ds,
        lambda items: preference_collate(items, tokenizer.pad_token_id),
        LoopSettings(cfg.train, cfg.eval, cfg.ckpt, cfg.logger, cfg.checkpoint_dir),
        logger,
        eval_dataset=eval_ds,
        ref_engine=ref_engine,
        loss_fn=loss_fn,
        nll_loss_coef=cfg.model.nll_loss_coef,
    )
    last = trainer.fit()
    strategy.save_hf_model(engine, tokenizer, cfg.ckpt.output_dir)
    logger.close()
    return last


def main(argv: Optional[list] = None) -> None:
    from openrlhf.cli.common import run_cli

    run_cli(train_dpo, "dpo", argv)


if __name__ == "__main__":
    main()
