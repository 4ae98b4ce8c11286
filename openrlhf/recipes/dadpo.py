"""daDPO (Eq. 10): DPO plus frozen teacher(s) of any family, each scoring the pairs in its own tokenizer and
chat template, online or from cached log-probs (python -m openrlhf.cli.train_dadpo)."""

from __future__ import annotations

from typing import List, Sequence

from openrlhf.config.schema import DADPOConfig
from openrlhf.datasets.tokenizer import data_tokenizer, teacher_renderers
from openrlhf.models.loss import DADPOLoss, teacher_name
from openrlhf.recipes.preference import TEACHER_FLAG, FrozenSide, preference_data, reference_side, start_run
from openrlhf.trainer.dadpo_trainer import DADPOTrainer


def teacher_sides(cfg: DADPOConfig, renderers: Sequence) -> List[FrozenSide]:
    """One side per --teacher.model_name_or_path (``teacher``, ``teacher_2``, ...), with its renderer."""
    paths = cfg.teacher.model_name_or_path
    return [
        FrozenSide(teacher_name(k), path, TEACHER_FLAG, cfg.teacher.offload, renderer)
        for k, (path, renderer) in enumerate(zip(paths, renderers, strict=True))
    ]


def dadpo_sides(cfg: DADPOConfig, teachers: Sequence[FrozenSide]) -> List[FrozenSide]:
    """The frozen models whose log-probs the daDPO loss reads: the reference unless --model.beta is 0
    (rDPO: no reference term), then every teacher."""
    return ([reference_side(cfg)] if cfg.model.beta > 0 else []) + list(teachers)


def train_dadpo(cfg: DADPOConfig, remote=None) -> dict:
    """Train, save the HF folder to --ckpt.output_dir, return the last step's metrics.
    ``--teacher.beta 0`` is DPO; ``--model.beta 0`` is rDPO (no reference model loaded). ``remote``:
    see :func:`~openrlhf.recipes.dpo.train_dpo`."""
    m = cfg.model
    # Cheap work first: tokenizers, data, caches, the loss; no model is loaded before this passes.
    tokenizer = data_tokenizer(m.model_name_or_path, cfg.data)
    teachers = teacher_sides(cfg, teacher_renderers(cfg.teacher, cfg.data))
    data = preference_data(cfg, tokenizer, dadpo_sides(cfg, teachers), remote=remote)
    loss_fn = DADPOLoss(m.beta, cfg.teacher.beta, label_smoothing=m.label_smoothing)

    run = start_run(cfg, tokenizer, data)
    ref_engine = run.reference_engine() if data.need_ref_model else None
    teacher_engines = {t.kind: run.load_frozen(t) for t in teachers if t.kind in data.online}
    trainer = DADPOTrainer(
        **run.trainer_args(),
        loss_fn=loss_fn,
        ref_engine=ref_engine,
        nll_loss_coef=m.nll_loss_coef,
        teachers=[t.kind for t in teachers],
        teacher_engines=teacher_engines,
    )
    return run.finish(trainer)
