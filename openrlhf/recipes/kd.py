"""dSFT+KL: SFT on the teacher's responses plus the token-level KL to the teacher
(python -m openrlhf.cli.train_kd; OpenRLHF's name for its knowledge-distillation trainer)."""

from __future__ import annotations

from openrlhf.config.schema import KDTrainConfig
from openrlhf.datasets.sft_dataset import sft_collate
from openrlhf.datasets.tokenizer import data_tokenizer, load_tokenizer, pad_token_id, shared_vocabulary
from openrlhf.recipes.common import (
    loop_parts,
    make_run_logger,
    make_strategy,
    prepare_frozen,
    prepare_policy,
    print_reports,
    save_trained,
    sft_datasets,
)
from openrlhf.trainer.base import steps_per_epoch
from openrlhf.trainer.kd_trainer import KDTrainer


def train_kd(cfg: KDTrainConfig) -> dict:
    """Train and save; returns the last step's metrics. The teacher must share the student's
    vocabulary (refused before anything loads otherwise)."""
    student = cfg.model.model_name_or_path
    teacher = cfg.teacher.model_name_or_path[0]
    tokenizer = data_tokenizer(student, cfg.data)
    vocab = shared_vocabulary(tokenizer, load_tokenizer(teacher, what="--teacher.model_name_or_path"), student, teacher)
    train_ds, eval_ds = sft_datasets(cfg, tokenizer, student)
    n_steps = steps_per_epoch(len(train_ds), cfg.train.batch_size) * cfg.train.max_epochs

    strategy = make_strategy(cfg)
    print_reports(strategy, train_ds, eval_ds)
    strategy.print(
        f"dSFT+KL: KL(teacher || student) on the response tokens over the {vocab} tokens of the shared "
        f"vocabulary, weight --kd.coef {cfg.kd.coef}"
    )
    logger = make_run_logger(strategy, cfg)
    engine = prepare_policy(strategy, cfg, n_steps)
    teacher_engine = prepare_frozen(strategy, cfg, teacher, cfg.teacher.offload, what="--teacher.model_name_or_path")
    pad_id = pad_token_id(tokenizer)
    collate = lambda items: sft_collate(items, pad_id)  # noqa: E731
    trainer = KDTrainer(
        loop_parts(cfg, strategy, engine, tokenizer, train_ds, eval_ds, collate, logger),
        teacher_engine=teacher_engine,
        kd_coef=cfg.kd.coef,
        vocab_size=vocab,
    )
    last = trainer.fit()
    save_trained(strategy, engine, tokenizer, cfg)
    logger.close()
    return last
