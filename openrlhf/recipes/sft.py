"""dSFT: supervised fine-tuning on response tokens (python -m openrlhf.cli.train_sft)."""

from __future__ import annotations

from openrlhf.config.schema import SFTConfig


def train_sft(cfg: SFTConfig) -> dict:
    """Train and save; returns the last step's metrics. Tests call this directly."""
    from openrlhf.datasets import build_dataset, sft_collate
    from openrlhf.datasets.packing import pack_batch
    from openrlhf.datasets.tokenizer import load_tokenizer, pad_token_id
    from openrlhf.recipes.common import loop_settings, make_run_logger, make_strategy, prepare_policy
    from openrlhf.trainer.base import steps_per_epoch
    from openrlhf.trainer.sft_trainer import SFTTrainer

    # Cheap checks first: tokenizer and data, before any model is loaded.
    tokenizer = load_tokenizer(cfg.model.model_name_or_path, cfg.data.tokenizer_chat_template)
    train_ds = build_dataset("sft", cfg.data, tokenizer, model_path=cfg.model.model_name_or_path)
    eval_ds = None
    if cfg.eval.dataset:
        eval_ds = build_dataset("sft", cfg.data, tokenizer, dataset=cfg.eval.dataset, split=cfg.eval.split,
                                what="--eval.dataset")
    n_steps = steps_per_epoch(len(train_ds), cfg.train.batch_size) * cfg.train.max_epochs

    strategy = make_strategy(cfg)
    strategy.print(train_ds.report())
    if eval_ds is not None:
        strategy.print("eval: " + eval_ds.report())
    logger = make_run_logger(strategy, cfg)
    engine = prepare_policy(strategy, cfg, n_steps)
    pad_id = pad_token_id(tokenizer)

    def collate(items):
        batch = sft_collate(items, pad_id)
        return pack_batch(batch) if cfg.ds.packing_samples else batch

    trainer = SFTTrainer(strategy, engine, tokenizer, train_ds, collate, loop_settings(cfg), logger,
                         eval_dataset=eval_ds)
    last = trainer.fit()
    strategy.save_hf_model(engine, tokenizer, cfg.ckpt.output_dir)
    logger.close()
    return last
