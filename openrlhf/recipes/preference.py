"""What the preference recipes share (:mod:`.dpo`, :mod:`.dadpo`, :mod:`.kto` and the Ray drivers in
:mod:`.ray_preference`): the frozen models a loss needs, the data with the source of each frozen model's
log-probs, and one run (strategy, logger, policy engine, the frozen engines, the end of training) built in
the same order for every method.

Each recipe reads top to bottom on these pieces: tokenizer and data first (cheap, no model loaded; the
sources of the log-probs are chosen there), then the loss, then :func:`start_run`,
:meth:`PreferenceRun.sources`, the trainer, its ``fit`` and :meth:`PreferenceRun.finish`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from openrlhf.config.schema import KTOTrainConfig, PreferenceTrainingConfig
from openrlhf.datasets.preference_data import PairTokenCounts, Regenerated, load_pairs, pair_collate
from openrlhf.generation.prompts import generation_config_eos, stop_token_ids
from openrlhf.generation.vllm_backend import VLLMSettings
from openrlhf.generation.vllm_weights import WEIGHT_RECEIVER
from openrlhf.logps.choose import choose_sources
from openrlhf.logps.frozen import FrozenModel, reference_model
from openrlhf.logps.known import LogpProvider
from openrlhf.logps.sources import KnownLogps, LogpSource, OnlineLogps
from openrlhf.recipes.common import (
    AdapterDisabled,
    loop_parts,
    make_run_logger,
    make_strategy,
    prepare_frozen,
    prepare_policy,
    save_trained,
    uses_lora,
)
from openrlhf.recipes.onpolicy import OnPolicyRounds
from openrlhf.trainer.base import LoopParts, steps_per_epoch
from openrlhf.utils.errors import DataError

# The task roots that have a policy, a reference (--ref.*) and preference data.
WithReference = Union[PreferenceTrainingConfig, KTOTrainConfig]


def reference_path(cfg: WithReference) -> str:
    """--ref.model_name_or_path, or the policy's initial weights when empty."""
    return cfg.ref.model_name_or_path or cfg.model.model_name_or_path


def reference(cfg: WithReference) -> FrozenModel:
    """The run's reference model (see :func:`~openrlhf.logps.frozen.reference_model`)."""
    return reference_model(cfg.ref, reference_path(cfg), cfg.data.max_len)


@dataclass
class PreferenceData:
    """Train (and eval) pairs, the collate function, the reports, and where each frozen model's log-probs
    come from: ``online`` (computed in the training process: their models are loaded), ``remote`` (computed
    by the remote provider), the others cached. ``token_counts``: tokens per tokenisation of training items
    (the budget of --train.dynamic_batch_enable)."""

    train: Any
    eval: Optional[Any]
    collate: Callable
    reports: List[str]
    online: List[str]
    remote: List[str] = field(default_factory=list)
    token_counts: Optional[Callable] = None
    # On-policy rounds (--onpolicy.round_steps): the training pairs whose rejected side they replace, and the
    # policy's renderer that tokenises the new answers.
    regenerated: Optional[Regenerated] = None
    renderer: Any = None


def preference_data(
    cfg: WithReference,
    tokenizer,
    models: Sequence[FrozenModel],
    *,
    extra_collate=None,
    remote: Optional[LogpProvider] = None,
) -> PreferenceData:
    """Train (and eval, when --eval.dataset) pairs with the collate function the loss needs: ``models`` are
    the frozen models whose log-probs the loss reads, each cached, online, or (with ``remote``, the Ray
    trainers' provider) remote (:func:`~openrlhf.logps.choose.choose_sources`); a teacher computed here
    reads its own tokenisation of each batch. ``extra_collate(items, batch)`` may add more (KTO's
    mismatched pairs)."""
    d = cfg.data
    whole = any(m.is_teacher for m in models)
    policy_path = cfg.model.model_name_or_path
    split = load_pairs(
        d, tokenizer, policy_path, d.dataset, d.dataset_split, "--data.dataset", d.dataset_probs, cfg.train.seed, whole
    )
    onpolicy = isinstance(cfg, PreferenceTrainingConfig) and cfg.onpolicy.round_steps > 0
    if onpolicy:  # before a server is asked for anything
        _check_onpolicy_sources(cfg, split.source, [m for m in models if m.served is not None])
    train = choose_sources(split, models, d, policy_path, remote)
    regenerated = None
    if onpolicy:
        _check_onpolicy_sources(cfg, split.source, [m for m in models if m.name not in train.online])
        train.dataset = regenerated = Regenerated(train.dataset)
    reports = split.reports + train.reports
    online = list(train.online)
    ev = None
    if cfg.eval is not None and cfg.eval.dataset:
        if remote is not None:
            raise DataError(
                "--eval.dataset: the Ray trainers do not evaluate during training yet; evaluate the "
                "saved model afterwards (python -m openrlhf.cli.evaluate / judge)"
            )
        ev_split = load_pairs(
            d, tokenizer, policy_path, cfg.eval.dataset, cfg.eval.split, "--eval.dataset", whole_responses=whole
        )
        ev_logps = choose_sources(ev_split, models, d, policy_path)
        ev = ev_logps.dataset
        reports += ["eval: " + r for r in ev_split.reports + ev_logps.reports]
        online += [name for name in ev_logps.online if name not in online]
    here = [] if remote is not None else online  # the models whose forward runs in this process
    own = {m.name: m.renderer for m in models if m.name in here and m.own_tokens}
    # The teachers whose forward runs on training batches here (the budget of dynamic batches counts them).
    train_own = {name: r for name, r in own.items() if name in train.online}
    return PreferenceData(
        train.dataset,
        ev,
        pair_collate(tokenizer, own, extra_collate, cfg.ds.packing_samples),
        reports,
        here,
        remote=online if remote is not None else [],
        token_counts=PairTokenCounts(train_own),
        regenerated=regenerated,
        renderer=split.dataset.renderer,
    )


def _check_onpolicy_sources(cfg: PreferenceTrainingConfig, source: str, fixed: Sequence[FrozenModel]) -> None:
    """On-policy rounds replace the rejected responses: every frozen model must score them as they come
    (online); ``fixed`` are those whose log-probs would be fixed before training (cached columns, a server
    asked before training)."""
    if fixed:
        which = ", ".join(
            m.name + (f" (served by {m.served.base_url})" if m.served is not None else " (cached columns)")
            for m in fixed
        )
        raise DataError(
            f"--onpolicy.round_steps {cfg.onpolicy.round_steps}: {source}: the log-probs of {which} are fixed "
            "before training (cached columns or a served model), but on-policy rounds replace the rejected "
            "responses they score; train on rows without the cached columns (the models then score online) and "
            "without --teacher.base_url"
        )


@dataclass(frozen=True)
class PreferenceRun:
    """One preference training run once its data is known: the strategy, the metrics logger and the
    policy engine (made by :func:`start_run`), and what every preference trainer is built from."""

    cfg: WithReference
    strategy: Any
    tokenizer: Any
    data: PreferenceData
    logger: Any
    engine: Any  # the policy, a DeepSpeed engine with its optimizer and schedule

    def loop(self) -> LoopParts:
        """What the training loop runs on (with on-policy rounds when asked)."""
        d = self.data
        return loop_parts(
            self.cfg,
            self.strategy,
            self.engine,
            self.tokenizer,
            d.train,
            d.eval,
            d.collate,
            self.logger,
            d.token_counts,
            self._rounds(),
        )

    def _rounds(self) -> Optional[OnPolicyRounds]:
        """The on-policy rounds of --onpolicy.round_steps, or None (offline)."""
        d, cfg = self.data, self.cfg
        if d.regenerated is None:
            return None
        stop_ids = stop_token_ids(
            self.tokenizer,
            use_chat_template=cfg.data.apply_chat_template,
            chat_template=cfg.data.tokenizer_chat_template,
            generation_eos=generation_config_eos(cfg.model.model_name_or_path),
        )
        self.strategy.print(
            f"on-policy: every {cfg.onpolicy.round_steps} optimizer steps the policy answers the next rows' prompts "
            f"(max {cfg.onpolicy.max_new_tokens} new tokens, temperature {cfg.onpolicy.temperature}); "
            f"answers kept in {os.path.join(cfg.checkpoint_dir, 'onpolicy')}"
        )
        return OnPolicyRounds(
            cfg.onpolicy,
            d.regenerated,
            strategy=self.strategy,
            engine=self.engine,
            tokenizer=self.tokenizer,
            renderer=d.renderer,
            stop_ids=stop_ids,
            seed=cfg.train.seed,
            max_len=cfg.data.max_len,
            checkpoint_dir=cfg.checkpoint_dir,
            vllm=self._onpolicy_vllm(stop_ids) if cfg.onpolicy.backend == "vllm" else None,
        )

    def _onpolicy_vllm(self, stop_ids) -> VLLMSettings:
        """The vLLM engine of --onpolicy.backend vllm: the policy's initial folder (its weights replaced before
        every round), the training dtype, --onpolicy.* decoding, --vllm.* engine settings."""
        cfg = self.cfg
        return VLLMSettings.of_sections(
            cfg.model.model_name_or_path,
            cfg.vllm,
            cfg.onpolicy,
            cfg.ds.param_dtype,
            cfg.train.seed,
            stop_ids,
            worker_extension_cls=WEIGHT_RECEIVER,
        )

    def load_frozen(self, model: FrozenModel):
        """``model`` as a frozen inference engine that follows the ZeRO stage."""
        return prepare_frozen(self.strategy, self.cfg, model.model_path, model.offload, what=model.flag)

    def reference_engine(self):
        """The reference model: with LoRA and no --ref.model_name_or_path, the policy with its adapters
        switched off (the frozen base, no second copy); else its own frozen engine."""
        model = reference(self.cfg)
        if uses_lora(self.cfg) and model.model_path == self.cfg.model.model_name_or_path:
            self.strategy.print("reference: the base weights with the LoRA adapters switched off (no second copy)")
            return AdapterDisabled(self.engine)
        return self.load_frozen(model)

    def sources(self, models: Sequence[FrozenModel]) -> Dict[str, LogpSource]:
        """One log-prob source per model, by name, as the data chose: the models computed here loaded as
        frozen engines (in order), the others read from the batches (cached or remote)."""
        out: Dict[str, LogpSource] = {}
        for m in models:
            if m.name in self.data.online:
                engine = self.reference_engine() if not m.is_teacher else self.load_frozen(m)
                out[m.name] = OnlineLogps(m, engine)
            else:
                out[m.name] = KnownLogps(m)
        return out

    def finish(self, last: dict) -> dict:
        """After training (``last``: the last step's metrics, returned): save the HF folder to
        --ckpt.output_dir, close the logger."""
        save_trained(self.strategy, self.engine, self.tokenizer, self.cfg)
        self.logger.close()
        return last


def start_run(cfg: WithReference, tokenizer, data: PreferenceData, notes: Sequence[str] = ()) -> PreferenceRun:
    """The expensive part begins: the strategy (distributed setup), the data's reports and ``notes`` printed on
    rank 0, the metrics logger (and run_config.yaml), the policy with its optimizer and LR schedule."""
    n_steps = steps_per_epoch(len(data.train), cfg.train.batch_size) * cfg.train.max_epochs
    strategy = make_strategy(cfg)
    for line in [*data.reports, *notes]:
        strategy.print(line)
    logger = make_run_logger(strategy, cfg)
    engine = prepare_policy(strategy, cfg, n_steps)
    return PreferenceRun(cfg, strategy, tokenizer, data, logger, engine)
