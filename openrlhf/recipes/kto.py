"""dKTO: KTO with the teacher's responses desirable and the student's undesirable
(python -m openrlhf.cli.train_kto)."""

from __future__ import annotations

import dataclasses

from openrlhf.config.schema import KTOTrainConfig
from openrlhf.datasets.preference_dataset import mismatched_pairs_batch
from openrlhf.datasets.tokenizer import data_tokenizer, pad_token_id
from openrlhf.logps.sources import KnownLogps, OnlineLogps
from openrlhf.models.loss import KTOLoss
from openrlhf.recipes.preference import preference_data, reference, start_run
from openrlhf.trainer.kto_trainer import KTOTrainer


def train_kto(cfg: KTOTrainConfig) -> dict:
    """Train, save the HF folder to --ckpt.output_dir, return the last step's metrics."""
    m = cfg.model
    # Cheap work first: tokenizer, data, caches, the loss; no model is loaded before this passes.
    tokenizer = data_tokenizer(m.model_name_or_path, cfg.data)
    pad_id = pad_token_id(tokenizer)

    def add_mismatched_pairs(items, batch):  # the rows KTO's KL reference point is estimated on
        return dataclasses.replace(batch, mismatched=mismatched_pairs_batch(items, pad_id, cfg.data.max_len))

    ref = reference(cfg)
    data = preference_data(cfg, tokenizer, [ref], extra_collate=add_mismatched_pairs)
    loss = KTOLoss(m.beta, cfg.kto.desirable_loss_weight, cfg.kto.undesirable_loss_weight)

    run = start_run(cfg, tokenizer, data)
    # The reference runs online even when its log-probs are cached: the KL reference point needs it.
    engine = run.reference_engine()
    source = OnlineLogps(ref, engine) if ref.name in data.online else KnownLogps(ref)
    trainer = KTOTrainer(run.loop(), loss=loss, reference=source, reference_engine=engine)
    return run.finish(trainer.fit())
