"""The body shared by train_dpo and train_dadpo: data (with cached log-probs), models, trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

from openrlhf.config.schema import Config


@dataclass
class PreferenceData:
    train: object
    eval: Optional[object]
    collate: Callable
    reports: List[str]
    need_ref_model: bool
    need_teacher_model: bool


class _Kept:
    """A view of a dataset restricted to some of its items."""

    def __init__(self, base, keep: List[int]):
        self.base, self.keep = base, keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int):
        return self.base[self.keep[i]]


def teacher_renderer(cfg: Config):
    """The teacher's own tokenizer and chat template (another family works)."""
    from openrlhf.cli.common import load_tokenizer
    from openrlhf.datasets import PromptRenderer

    tok = load_tokenizer(cfg.teacher.model_name_or_path, what="--teacher.model_name_or_path")
    return PromptRenderer(
        tok,
        apply_chat_template=cfg.data.apply_chat_template,
        input_template=cfg.data.input_template,
        chat_template=cfg.teacher.tokenizer_chat_template,
        model_path=cfg.teacher.model_name_or_path,
        chat_template_flag="--teacher.tokenizer_chat_template",
    )


def _split(cfg: Config, tokenizer, t_renderer, use_ref: bool, source: str, split: str, what: str):
    """One split: (dataset view, report lines, ref model needed, teacher model needed)."""
    from openrlhf.datasets import PreferenceDataset, load_rows
    from openrlhf.datasets import logp_cache as lc

    rows = load_rows(source, split=split, max_samples=cfg.data.max_samples, what=what)
    ds = PreferenceDataset(rows, tokenizer, cfg.data, source, model_path=cfg.model.model_name_or_path)
    reports = [ds.report()]
    keep = list(range(len(ds)))
    if t_renderer is not None:
        # The teacher scores the full text of both responses; a pair whose response was cut
        # for the policy would compare different texts, so daDPO leaves it out.
        keep = [i for i in keep if not (ds[i]["chosen_truncated"] or ds[i]["rejected_truncated"])]
        if len(keep) < len(ds):
            reports.append(f"{source}: daDPO leaves out {len(ds) - len(keep)} pairs whose response was truncated "
                           f"to --data.max_len {cfg.data.max_len} (the teacher scores whole responses)")
    needed = [ds[i]["index"] for i in keep]
    keys = (cfg.data.prompt_key, cfg.data.chosen_key, cfg.data.rejected_key)
    caches = []
    need_ref = need_teacher = False
    if use_ref:
        if lc.has_cache(rows, "ref"):
            ref_path = cfg.ref.model_name_or_path or cfg.model.model_name_or_path
            fp = lc.setting_fingerprint(lc.model_fingerprint(ref_path, "--ref.model_name_or_path"),
                                        lc.tokenization_fingerprint(ds.renderer, cfg.data.max_len))
            caches.append(lc.load_cached(rows, "ref", fp, keys, source, needed, "--ref.model_name_or_path"))
            reports.append(f"{source}: using cached reference log-probs (the reference model is not loaded for it)")
        else:
            need_ref = True
    if t_renderer is not None:
        if lc.has_cache(rows, "teacher"):
            fp = lc.setting_fingerprint(lc.model_fingerprint(cfg.teacher.model_name_or_path),
                                        lc.tokenization_fingerprint(t_renderer, None))
            caches.append(lc.load_cached(rows, "teacher", fp, keys, source, needed, "--teacher.model_name_or_path"))
            reports.append(f"{source}: using cached teacher log-probs (the teacher model is not loaded for it)")
        else:
            need_teacher = True
    view = _Kept(ds, keep) if len(keep) < len(ds) else ds
    if not keep:
        from openrlhf.datasets import DataError

        raise DataError(f"{source}: no pairs left for training: " + "; ".join(reports))
    return (lc.WithCachedLogps(view, caches) if caches else view), reports, need_ref, need_teacher


def prepare_preference_data(cfg: Config, tokenizer, t_renderer=None, use_ref: bool = True) -> PreferenceData:
    from openrlhf.datasets import preference_collate
    from openrlhf.datasets.logp_cache import add_cached_to_batch

    train, reports, need_ref, need_teacher = _split(
        cfg, tokenizer, t_renderer, use_ref, cfg.data.dataset, cfg.data.dataset_split, "--data.dataset")
    ev = None
    if cfg.eval.dataset:
        ev, ev_reports, e_ref, e_teacher = _split(
            cfg, tokenizer, t_renderer, use_ref, cfg.eval.dataset, cfg.eval.split, "--eval.dataset")
        reports += ["eval: " + r for r in ev_reports]
        need_ref, need_teacher = need_ref or e_ref, need_teacher or e_teacher
    online_teacher = t_renderer if need_teacher else None

    def collate(items):
        batch = preference_collate(items, tokenizer.pad_token_id, teacher_renderer=online_teacher)
        return add_cached_to_batch(batch, items)

    return PreferenceData(train, ev, collate, reports, need_ref, need_teacher)


def train_preference(cfg: Config, task: str) -> dict:
    """Train with DPO (``task="dpo"``) or daDPO (``"dadpo"``) and save; returns the last metrics."""
    from openrlhf.cli.common import load_tokenizer, make_run_logger, make_strategy, prepare_frozen, prepare_policy
    from openrlhf.models.loss import DADPOLoss, DPOLoss
    from openrlhf.trainer.base import LoopSettings, steps_per_epoch
    from openrlhf.trainer.dadpo_trainer import DADPOTrainer
    from openrlhf.trainer.dpo_trainer import DPOTrainer

    m = cfg.model
    # Cheap work first: tokenizers, data, caches, losses; no model is loaded before this passes.
    tokenizer = load_tokenizer(m.model_name_or_path, cfg.data.tokenizer_chat_template)
    t_renderer = teacher_renderer(cfg) if task == "dadpo" else None
    use_ref = task == "dpo" or m.beta > 0
    data = prepare_preference_data(cfg, tokenizer, t_renderer, use_ref=use_ref)
    n_steps = steps_per_epoch(len(data.train), cfg.train.batch_size) * cfg.train.max_epochs
    if task == "dadpo":
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
        ref_path = cfg.ref.model_name_or_path or m.model_name_or_path
        ref_engine = prepare_frozen(strategy, cfg, ref_path, cfg.ref.offload, what="--ref.model_name_or_path")
    common = dict(eval_dataset=data.eval, ref_engine=ref_engine, loss_fn=loss_fn, nll_loss_coef=m.nll_loss_coef)
    args = (strategy, engine, tokenizer, data.train, data.collate,
            LoopSettings(cfg.train, cfg.eval, cfg.ckpt, cfg.logger, cfg.checkpoint_dir), logger)
    if task == "dadpo":
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
