"""DPO and daDPO training (python -m openrlhf.cli.train_dpo / train_dadpo)."""

from __future__ import annotations

from typing import List, Union

from openrlhf.config.schema import DADPOConfig, DPOConfig


def reference_path(cfg: DPOConfig) -> str:
    """--ref.model_name_or_path, or the policy's initial weights when empty."""
    return cfg.ref.model_name_or_path or cfg.model.model_name_or_path


def scored_sides(cfg: Union[DPOConfig, DADPOConfig], teacher_renderer=None) -> List:
    """The frozen models the loss needs: the reference unless daDPO runs with beta 0 (rDPO),
    and the teacher for daDPO."""
    from openrlhf.datasets.preference_data import ScoredSide

    sides = []
    if not isinstance(cfg, DADPOConfig) or cfg.model.beta > 0:
        sides.append(ScoredSide("ref", reference_path(cfg), "--ref.model_name_or_path", None, cfg.data.max_len))
    if isinstance(cfg, DADPOConfig):
        sides.append(ScoredSide("teacher", cfg.teacher.model_name_or_path, "--teacher.model_name_or_path",
                                teacher_renderer, None))
    return sides


def _train(cfg: Union[DPOConfig, DADPOConfig]) -> dict:
    from openrlhf.datasets.preference_data import prepare_preference_data
    from openrlhf.datasets.tokenizer import load_tokenizer, teacher_renderer
    from openrlhf.models.loss import DADPOLoss, DPOLoss
    from openrlhf.recipes.common import loop_settings, make_run_logger, make_strategy, prepare_frozen, prepare_policy
    from openrlhf.trainer.base import steps_per_epoch
    from openrlhf.trainer.dadpo_trainer import DADPOTrainer
    from openrlhf.trainer.dpo_trainer import DPOTrainer

    m = cfg.model
    dadpo = isinstance(cfg, DADPOConfig)
    # Cheap work first: tokenizers, data, caches, losses; no model is loaded before this passes.
    tokenizer = load_tokenizer(m.model_name_or_path, cfg.data.tokenizer_chat_template)
    t_renderer = teacher_renderer(cfg.teacher, cfg.data) if dadpo else None
    data = prepare_preference_data(cfg.data, cfg.eval, tokenizer, m.model_name_or_path,
                                   scored_sides(cfg, t_renderer), teacher_renderer=t_renderer)
    n_steps = steps_per_epoch(len(data.train), cfg.train.batch_size) * cfg.train.max_epochs
    if dadpo:
        loss_fn = DADPOLoss(m.beta, cfg.teacher.beta, label_smoothing=m.label_smoothing)
    else:
        loss_fn = DPOLoss(m.beta, label_smoothing=m.label_smoothing, ipo=m.ipo_enable)

    strategy = make_strategy(cfg)
    for line in data.reports:
        strategy.print(line)
    logger = make_run_logger(strategy, cfg)
    engine = prepare_policy(strategy, cfg, n_steps)
    ref_engine = None
    if data.need_ref_model:
        ref_engine = prepare_frozen(strategy, cfg, reference_path(cfg), cfg.ref.offload, what="--ref.model_name_or_path")
    common = dict(eval_dataset=data.eval, ref_engine=ref_engine, loss_fn=loss_fn, nll_loss_coef=m.nll_loss_coef)
    args = (strategy, engine, tokenizer, data.train, data.collate, loop_settings(cfg), logger)
    if dadpo:
        teacher_engine = None
        if data.need_teacher_model:
            teacher_engine = prepare_frozen(strategy, cfg, cfg.teacher.model_name_or_path, cfg.teacher.offload,
                                            what="--teacher.model_name_or_path")
        trainer = DADPOTrainer(*args, teacher_engine=teacher_engine, **common)
    else:
        trainer = DPOTrainer(*args, **common)
    last = trainer.fit()
    strategy.save_hf_model(engine, tokenizer, cfg.ckpt.output_dir)
    logger.close()
    return last


def train_dpo(cfg: DPOConfig) -> dict:
    """DPO / conservative DPO / IPO against a frozen reference (or cached reference log-probs).
    Trains, saves the HF folder to --ckpt.output_dir, returns the last step's metrics."""
    if isinstance(cfg, DADPOConfig):
        raise TypeError("train_dpo got a DADPOConfig; call train_dadpo")
    return _train(cfg)


def train_dadpo(cfg: DADPOConfig) -> dict:
    """daDPO (Eq. 10): DPO plus a frozen teacher of any family (online or cached log-probs).
    ``--teacher.beta 0`` is DPO; ``--model.beta 0`` is rDPO (no reference model loaded)."""
    return _train(cfg)
