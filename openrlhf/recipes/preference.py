"""What the preference recipes share (:mod:`.dpo`, :mod:`.dadpo`, :mod:`.kto` and the Ray drivers in
:mod:`.ray_preference`): the frozen sides a loss needs, the data, and one run (strategy, logger, policy
engine, reference engine, the end of training) built in the same order for every method.

Each recipe reads top to bottom on these pieces: tokenizer and data first (cheap, no model loaded),
then the loss, then :func:`start_run`, the frozen engines, the trainer and :meth:`PreferenceRun.finish`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Sequence, Union

from openrlhf.config.schema import KTOTrainConfig, PreferenceTrainingConfig
from openrlhf.datasets.preference_data import prepare_preference_data
from openrlhf.recipes.common import make_run_logger, make_strategy, prepare_policy
from openrlhf.trainer.base import steps_per_epoch
from openrlhf.datasets.preference_data import ScoredSide
from openrlhf.recipes.common import loop_settings
from openrlhf.recipes.common import prepare_frozen
from openrlhf.recipes.common import AdapterDisabled, uses_lora
from openrlhf.recipes.common import save_trained

# The task roots that have a policy, a reference (--ref.*) and preference data.
WithReference = Union[PreferenceTrainingConfig, KTOTrainConfig]

REF_FLAG = "--ref.model_name_or_path"
TEACHER_FLAG = "--teacher.model_name_or_path"


class FrozenSide(NamedTuple):
    """A frozen model of a preference run: the reference (``kind`` ``ref``) or one teacher (``teacher``,
    ``teacher_2``, ...), where it lives and the flag that named it, whether its weights are offloaded,
    and how the pairs are tokenised for it: ``renderer`` (a teacher's own tokenizer and chat template;
    None: the policy's tokenisation) and ``max_len`` (None: whole responses, as a teacher scores them)."""

    kind: str
    model_path: str
    flag: str
    offload: bool
    renderer: Any = None
    max_len: Optional[int] = None

    def scored(self):
        """This side as the data layer sees it (:class:`~openrlhf.datasets.preference_data.ScoredSide`)."""
        return ScoredSide(
            kind=self.kind, model_path=self.model_path, flag=self.flag, renderer=self.renderer, max_len=self.max_len
        )


def reference_path(cfg: WithReference) -> str:
    """--ref.model_name_or_path, or the policy's initial weights when empty."""
    return cfg.ref.model_name_or_path or cfg.model.model_name_or_path


def reference_side(cfg: WithReference) -> FrozenSide:
    """The reference: scored in the policy's tokenisation, cut to --data.max_len as the policy is trained."""
    return FrozenSide("ref", reference_path(cfg), REF_FLAG, cfg.ref.offload, None, cfg.data.max_len)


def preference_data(cfg: WithReference, tokenizer, sides: Sequence[FrozenSide], *, extra_collate=None, remote=None):
    """Train (and eval) pairs with the collate function the loss needs
    (:func:`~openrlhf.datasets.preference_data.prepare_preference_data`): ``sides`` are the frozen models
    whose log-probs the loss reads (each may be cached); ``remote`` (the Ray trainers' provider) scores every
    side that is not cached."""
    return prepare_preference_data(
        cfg.data,
        cfg.eval,
        tokenizer,
        cfg.model.model_name_or_path,
        [side.scored() for side in sides],
        extra_collate=extra_collate,
        packing=cfg.ds.packing_samples,
        seed=cfg.train.seed,
        remote=remote,
    )


@dataclass(frozen=True)
class PreferenceRun:
    """One preference training run once its data is known: the strategy, the metrics logger and the
    policy engine (made by :func:`start_run`), and what every preference trainer is built from."""

    cfg: WithReference
    strategy: Any
    tokenizer: Any
    data: Any  # PreferenceData
    logger: Any
    engine: Any  # the policy, a DeepSpeed engine with its optimizer and schedule

    def trainer_args(self) -> Dict[str, Any]:
        """The keyword arguments of the loop that every preference trainer takes."""
        return dict(
            strategy=self.strategy,
            engine=self.engine,
            tokenizer=self.tokenizer,
            train_dataset=self.data.train,
            collate_fn=self.data.collate,
            settings=loop_settings(self.cfg),
            logger=self.logger,
            eval_dataset=self.data.eval,
            num_workers=self.cfg.data.dataloader_num_workers,
            token_counts=self.data.token_counts,
        )

    def load_frozen(self, side: FrozenSide):
        """``side``'s model as a frozen inference engine that follows the ZeRO stage."""
        return prepare_frozen(self.strategy, self.cfg, side.model_path, side.offload, what=side.flag)

    def reference_engine(self):
        """The reference model: with LoRA and no --ref.model_name_or_path, the policy with its adapters
        switched off (the frozen base, no second copy); else its own frozen engine."""
        side = reference_side(self.cfg)
        if uses_lora(self.cfg) and side.model_path == self.cfg.model.model_name_or_path:
            self.strategy.print("reference: the base weights with the LoRA adapters switched off (no second copy)")
            return AdapterDisabled(self.engine)
        return self.load_frozen(side)

    def finish(self, trainer) -> dict:
        """Train, save the HF folder to --ckpt.output_dir, close the logger; the last step's metrics."""
        last = trainer.fit()
        save_trained(self.strategy, self.engine, self.tokenizer, self.cfg)
        self.logger.close()
        return last


def start_run(cfg: WithReference, tokenizer, data, notes: Sequence[str] = ()) -> PreferenceRun:
    """The expensive part begins: the strategy (distributed setup), the data's reports and ``notes`` printed on
    rank 0, the metrics logger (and run_config.yaml), the policy with its optimizer and LR schedule."""
    n_steps = steps_per_epoch(len(data.train), cfg.train.batch_size) * cfg.train.max_epochs
    strategy = make_strategy(cfg)
    for line in [*data.reports, *notes]:
        strategy.print(line)
    logger = make_run_logger(strategy, cfg)
    engine = prepare_policy(strategy, cfg, n_steps)
    return PreferenceRun(cfg, strategy, tokenizer, data, logger, engine)
