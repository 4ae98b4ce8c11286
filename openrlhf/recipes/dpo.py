"""dDPO: DPO / conservative DPO / IPO against a frozen reference (python -m openrlhf.cli.train_dpo); with
--kd.coef > 0 and a teacher of the student's vocabulary, dDPO+KL (the token-level KL to the teacher)."""

from __future__ import annotations

from typing import Optional

from openrlhf.config.schema import DPOConfig
from openrlhf.datasets.tokenizer import data_tokenizer, load_tokenizer, shared_vocabulary
from openrlhf.logps.frozen import TEACHER_FLAG, FrozenModel
from openrlhf.logps.known import LogpProvider
from openrlhf.models.loss import DPOLoss
from openrlhf.recipes.preference import preference_data, reference, start_run
from openrlhf.trainer.preference_trainer import KLTeacher, PreferenceTrainer


def train_dpo(cfg: DPOConfig, remote: Optional[LogpProvider] = None) -> dict:
    """Train, save the HF folder to --ckpt.output_dir, return the last step's metrics.

    The reference log-probs come from the reference model, from the cached columns of
    ``score_logps`` (the model is then not loaded), or, with ``remote`` (the Ray trainer's frozen
    groups: ``remote.get(name, row index)``), from elsewhere."""
    m = cfg.model
    # Cheap work first: tokenizers, data, caches, the loss; no model is loaded before this passes.
    tokenizer = data_tokenizer(m.model_name_or_path, cfg.data)
    kd_teacher: Optional[FrozenModel] = None
    notes = []
    if cfg.kd.coef > 0:
        kd_teacher = FrozenModel("teacher", cfg.teacher.model_name_or_path[0], TEACHER_FLAG, cfg.teacher.offload)
        kd_vocab = shared_vocabulary(
            tokenizer,
            load_tokenizer(kd_teacher.model_path, what=TEACHER_FLAG),
            m.model_name_or_path,
            kd_teacher.model_path,
        )
        notes.append(
            f"dDPO+KL: KL(teacher || policy) on the chosen responses over the {kd_vocab} tokens of the "
            f"shared vocabulary, weight --kd.coef {cfg.kd.coef}"
        )
    ref = reference(cfg)
    data = preference_data(cfg, tokenizer, [ref], remote=remote)
    loss = DPOLoss(m.beta, label_smoothing=m.label_smoothing, ipo=m.ipo_enable)

    run = start_run(cfg, tokenizer, data, notes)
    sources = run.sources([ref])
    kd = None
    if kd_teacher is not None:
        kd = KLTeacher(run.load_frozen(kd_teacher), cfg.kd.coef, kd_vocab)
    trainer = PreferenceTrainer(
        run.loop(), loss=loss, reference=sources[ref.name], nll_loss_coef=m.nll_loss_coef, kd=kd
    )
    return run.finish(trainer.fit())
