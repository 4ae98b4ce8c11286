"""dSFT: supervised fine-tuning on response tokens (python -m openrlhf.cli.train_sft)."""

from __future__ import annotations

from openrlhf.config.schema import SFTConfig
from openrlhf.datasets.sft_dataset import sft_collate
from openrlhf.datasets.tokenizer import data_tokenizer, pad_token_id
from openrlhf.recipes.common import (
    loop_parts,
    make_run_logger,
    make_strategy,
    prepare_policy,
    print_reports,
    save_trained,
    sft_datasets,
)
from openrlhf.trainer.base import steps_per_epoch
from openrlhf.trainer.sft_trainer import SFTTrainer


def train_sft(cfg: SFTConfig) -> dict:
    """Train and save; returns the last step's metrics. Tests call this directly."""
    # Cheap checks first: tokenizer and data, before any model is loaded.
    tokenizer = data_tokenizer(cfg.model.model_name_or_path, cfg.data)
    train_ds, eval_ds = sft_datasets(cfg, tokenizer, cfg.model.model_name_or_path)
    n_steps = steps_per_epoch(len(train_ds), cfg.train.batch_size) * cfg.train.max_epochs

    strategy = make_strategy(cfg)
    print_reports(strategy, train_ds, eval_ds)
    logger = make_run_logger(strategy, cfg)
    engine = prepare_policy(strategy, cfg, n_steps)
    pad_id = pad_token_id(tokenizer)

    def collate(items):
        batch = sft_collate(items, pad_id)
        return batch.packed() if cfg.ds.packing_samples else batch

    trainer = SFTTrainer(loop_parts(cfg, strategy, engine, tokenizer, train_ds, eval_ds, collate, logger))
    last = trainer.fit()
    save_trained(strategy, engine, tokenizer, cfg)
    logger.close()
    return last
