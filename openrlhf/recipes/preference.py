"""DPO (+ the token-level KL: dDPO+KL), daDPO (one or several teachers) and KTO training
(python -m openrlhf.cli.train_dpo / train_dadpo / train_kto)."""

from __future__ import annotations

from typing import List, Union

from openrlhf.config.schema import DADPOConfig, DPOConfig, KTOTrainConfig

PreferenceConfig = Union[DPOConfig, DADPOConfig, KTOTrainConfig]


def reference_path(cfg: PreferenceConfig) -> str:
    """--ref.model_name_or_path, or the policy's initial weights when empty."""
    return cfg.ref.model_name_or_path or cfg.model.model_name_or_path


def teacher_names(cfg: DADPOConfig) -> List[str]:
    from openrlhf.models.loss import teacher_name

    return [teacher_name(k) for k in range(len(cfg.teacher.model_name_or_path))]


def scored_sides(cfg: PreferenceConfig, teacher_renderers=None) -> List:
    """The frozen models whose sequence log-probs the loss needs (each may be cached): the
    reference unless daDPO runs with beta 0 (rDPO), and every daDPO teacher. ``teacher_renderers``:
    one per teacher, in order (None: each teacher's own tokenizer and template, loaded here)."""
    from openrlhf.datasets.preference_data import ScoredSide
    from openrlhf.datasets.tokenizer import teacher_renderers as own_renderers

    sides = []
    if not isinstance(cfg, DADPOConfig) or cfg.model.beta > 0:
        sides.append(ScoredSide("ref", reference_path(cfg), "--ref.model_name_or_path", None, cfg.data.max_len))
    if isinstance(cfg, DADPOConfig):
        if teacher_renderers is None:
            teacher_renderers = own_renderers(cfg.teacher, cfg.data)
        for name, path, renderer in zip(teacher_names(cfg), cfg.teacher.model_name_or_path, teacher_renderers,
                                        strict=True):
            sides.append(ScoredSide(name, path, "--teacher.model_name_or_path", renderer, None))
    return sides


def _loss(cfg: PreferenceConfig):
    from openrlhf.models.loss import DADPOLoss, DPOLoss, KTOLoss

    m = cfg.model
    if isinstance(cfg, DADPOConfig):
        return DADPOLoss(m.beta, cfg.teacher.beta, label_smoothing=m.label_smoothing)
    if isinstance(cfg, KTOTrainConfig):
        return KTOLoss(m.beta, cfg.kto.desirable_loss_weight, cfg.kto.undesirable_loss_weight)
    return DPOLoss(m.beta, label_smoothing=m.label_smoothing, ipo=m.ipo_enable)


def _train(cfg: PreferenceConfig, remote=None) -> dict:
    from openrlhf.datasets.preference_data import prepare_preference_data
    from openrlhf.datasets.tokenizer import data_tokenizer, load_tokenizer, shared_vocabulary, teacher_renderers
    from openrlhf.recipes.common import (AdapterDisabled, loop_settings, make_run_logger, make_strategy, prepare_frozen,
                                         prepare_policy, save_trained, uses_lora)
    from openrlhf.trainer.base import steps_per_epoch
    from openrlhf.trainer.dadpo_trainer import DADPOTrainer
    from openrlhf.trainer.dpo_trainer import DPOTrainer
    from openrlhf.trainer.kto_trainer import KTOTrainer

    m = cfg.model
    dadpo, kto = isinstance(cfg, DADPOConfig), isinstance(cfg, KTOTrainConfig)
    kd = isinstance(cfg, DPOConfig) and cfg.kd.coef > 0
    # Cheap work first: tokenizers, data, caches, losses; no model is loaded before this passes.
    tokenizer = data_tokenizer(m.model_name_or_path, cfg.data)
    renderers = teacher_renderers(cfg.teacher, cfg.data) if dadpo else []
    kd_vocab = 0
    if kd:
        kd_path = cfg.teacher.model_name_or_path[0]
        kd_vocab = shared_vocabulary(tokenizer, load_tokenizer(kd_path, what="--teacher.model_name_or_path"),
                                     m.model_name_or_path, kd_path)
    extra = None
    if kto:
        from openrlhf.datasets.preference_dataset import mismatched_pairs_batch
        from openrlhf.datasets.tokenizer import pad_token_id

        pad_id = pad_token_id(tokenizer)

        def extra(items, batch):
            for k, v in mismatched_pairs_batch(items, pad_id, cfg.data.max_len).items():
                batch["kl_" + k] = v
            return batch

    data = prepare_preference_data(cfg.data, cfg.eval, tokenizer, m.model_name_or_path,
                                   scored_sides(cfg, renderers), extra_collate=extra, packing=cfg.ds.packing_samples,
                                   seed=cfg.train.seed, remote=remote)
    n_steps = steps_per_epoch(len(data.train), cfg.train.batch_size) * cfg.train.max_epochs
    loss_fn = _loss(cfg)

    strategy = make_strategy(cfg)
    for line in data.reports:
        strategy.print(line)
    if kd:
        strategy.print(f"dDPO+KL: KL(teacher || policy) on the chosen responses over the {kd_vocab} tokens of the "
                       f"shared vocabulary, weight --kd.coef {cfg.kd.coef}")
    logger = make_run_logger(strategy, cfg)
    engine = prepare_policy(strategy, cfg, n_steps)
    ref_engine = None
    if data.need_ref_model or kto:  # KTO's KL reference point needs the reference online
        if uses_lora(cfg) and reference_path(cfg) == m.model_name_or_path:
            # The reference is the frozen base: the policy with its adapters off (no second copy).
            ref_engine = AdapterDisabled(engine)
            strategy.print("reference: the base weights with the LoRA adapters switched off (no second copy)")
        else:
            ref_engine = prepare_frozen(strategy, cfg, reference_path(cfg), cfg.ref.offload,
                                        what="--ref.model_name_or_path")
    common = dict(eval_dataset=data.eval, ref_engine=ref_engine, loss_fn=loss_fn,
                  num_workers=cfg.data.dataloader_num_workers)
    args = (strategy, engine, tokenizer, data.train, data.collate, loop_settings(cfg), logger)
    if dadpo:
        names = teacher_names(cfg)
        engines = {name: prepare_frozen(strategy, cfg, path, cfg.teacher.offload, what="--teacher.model_name_or_path")
                   for name, path in zip(names, cfg.teacher.model_name_or_path, strict=True) if name in data.online}
        trainer = DADPOTrainer(*args, teachers=names, teacher_engines=engines, nll_loss_coef=m.nll_loss_coef, **common)
    elif kto:
        trainer = KTOTrainer(*args, **common)
    else:
        kd_engine = None
        if kd:
            kd_engine = prepare_frozen(strategy, cfg, cfg.teacher.model_name_or_path[0], cfg.teacher.offload,
                                       what="--teacher.model_name_or_path")
        trainer = DPOTrainer(*args, nll_loss_coef=m.nll_loss_coef, kd_teacher_engine=kd_engine,
                             kd_coef=cfg.kd.coef if kd else 0.0, kd_vocab_size=kd_vocab, **common)
    last = trainer.fit()
    save_trained(strategy, engine, tokenizer, cfg)
    logger.close()
    return last


def train_dpo(cfg: DPOConfig) -> dict:
    """DPO / conservative DPO / IPO against a frozen reference (or cached reference log-probs);
    with ``--kd.coef`` > 0 and a teacher of the same vocabulary, dDPO+KL.
    Trains, saves the HF folder to --ckpt.output_dir, returns the last step's metrics."""
    if not isinstance(cfg, DPOConfig):
        raise TypeError(f"train_dpo takes a DPOConfig, got {type(cfg).__name__}")
    return _train(cfg)


def train_dadpo(cfg: DADPOConfig) -> dict:
    """daDPO (Eq. 10): DPO plus frozen teacher(s) of any family (online or cached log-probs).
    ``--teacher.beta 0`` is DPO; ``--model.beta 0`` is rDPO (no reference model loaded)."""
    if not isinstance(cfg, DADPOConfig):
        raise TypeError(f"train_dadpo takes a DADPOConfig, got {type(cfg).__name__}")
    return _train(cfg)


def train_with_remote_logps(cfg: PreferenceConfig, provider) -> dict:
    """train_dpo / train_dadpo with every reference / teacher log-prob that is not cached read from
    ``provider.get(kind, row index)`` (the Ray trainers' frozen actor groups): no frozen model is
    loaded in this process. Everything else (data, loss, loop, checkpoints, outputs) is the same."""
    if not isinstance(cfg, (DPOConfig, DADPOConfig)):
        raise TypeError(f"train_with_remote_logps takes a DPOConfig or DADPOConfig, got {type(cfg).__name__}")
    return _train(cfg, remote=provider)


def train_kto(cfg: KTOTrainConfig) -> dict:
    """dKTO: KTO with the teacher's responses desirable and the student's undesirable."""
    if not isinstance(cfg, KTOTrainConfig):
        raise TypeError(f"train_kto takes a KTOTrainConfig, got {type(cfg).__name__}")
    return _train(cfg)
