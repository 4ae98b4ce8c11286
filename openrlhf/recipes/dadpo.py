"""daDPO (Eq. 10): DPO plus frozen teacher(s) of any family, each scoring the pairs in its own tokenizer and
chat template, online or from cached log-probs (python -m openrlhf.cli.train_dadpo)."""

from __future__ import annotations

from typing import List, Optional

from openrlhf.config.schema import DADPOConfig
from openrlhf.datasets.tokenizer import data_tokenizer, teacher_renderers
from openrlhf.logps.frozen import FrozenModel, teacher_models
from openrlhf.logps.known import LogpProvider
from openrlhf.models.loss import DADPOLoss
from openrlhf.recipes.preference import preference_data, reference, start_run
from openrlhf.trainer.preference_trainer import PreferenceTrainer


def dadpo_models(cfg: DADPOConfig) -> List[FrozenModel]:
    """The frozen models whose log-probs the daDPO loss reads: the reference unless --model.beta is 0
    (rDPO: no reference term), then every teacher (``teacher``, ``teacher_2``, ...) with its own tokenizer
    and chat template."""
    teachers = teacher_models(cfg.teacher, teacher_renderers(cfg.teacher, cfg.data))
    return ([reference(cfg)] if cfg.model.beta > 0 else []) + teachers


def train_dadpo(cfg: DADPOConfig, remote: Optional[LogpProvider] = None) -> dict:
    """Train, save the HF folder to --ckpt.output_dir, return the last step's metrics.
    ``--teacher.beta 0`` is DPO; ``--model.beta 0`` is rDPO (no reference model loaded). ``remote``:
    see :func:`~openrlhf.recipes.dpo.train_dpo`."""
    m = cfg.model
    # Cheap work first: tokenizers, data, caches, the loss; no model is loaded before this passes.
    tokenizer = data_tokenizer(m.model_name_or_path, cfg.data)
    models = dadpo_models(cfg)
    data = preference_data(cfg, tokenizer, models, remote=remote)
    loss = DADPOLoss(m.beta, cfg.teacher.beta, label_smoothing=m.label_smoothing)

    run = start_run(cfg, tokenizer, data)
    sources = run.sources(models)
    trainer = PreferenceTrainer(
        run.loop(),
        loss=loss,
        reference=sources.get("ref"),
        teachers=[sources[t.name] for t in models if t.is_teacher],
        nll_loss_coef=m.nll_loss_coef,
    )
    return run.finish(trainer.fit())
