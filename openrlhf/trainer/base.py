"""The training loop shared by every trainer.

A subclass supplies ``_loss_step(batch) -> (loss, metrics)`` for one micro-batch (a typed batch:
:class:`~openrlhf.datasets.batch.SeqBatch` or :class:`~openrlhf.datasets.batch.PairBatch`; and
``_eval_step`` when it differs). The loop owns data order, gradient accumulation,
logging, evaluation and checkpoint/resume, so a resumed run sees the same data in the
same order as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from openrlhf.config.schema import CkptConfig, EvalConfig, LoggerConfig, TrainConfig
from openrlhf.logps.known import WithKnownLogps
from openrlhf.utils import timeline
from openrlhf.utils.deepspeed import ckpt_io
from openrlhf.utils.deepspeed.sampler import ResumableDistributedSampler
from openrlhf.utils.errors import DataError, Interrupted


@dataclass
class LoopSettings:
    train: TrainConfig
    eval: EvalConfig
    ckpt: CkptConfig
    logger: LoggerConfig
    checkpoint_dir: str


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (the last partial global batch is dropped)."""
    if n_rows < batch_size:
        raise DataError(
            f"the training set has {n_rows} usable rows, fewer than one global batch (--train.batch_size {batch_size})"
        )
    return n_rows // batch_size


def _openrlhf_default_hint() -> str:
    """A note naming OpenRLHF's default checkpoint folders (./ckpt/checkpoints_<task>) that hold a
    checkpoint, for a run that found none where it looked; "" when there are none."""
    root = os.path.join(os.getcwd(), "ckpt")
    found = sorted(
        os.path.join("ckpt", d)
        for d in (os.listdir(root) if os.path.isdir(root) else [])
        if d.startswith("checkpoints_") and ckpt_io.find_latest_tag(os.path.join(root, d))
    )
    return f"; OpenRLHF's default folder {', '.join(found)} holds one: pass --ckpt.path to resume it" if found else ""


def mean_metrics(records: List[Dict[str, float]]) -> Dict[str, float]:
    keys = records[0].keys()
    return {k: sum(r[k] for r in records) / len(records) for k in keys}


@dataclass
class LoopParts:
    """What the loop runs on: ``strategy`` (the DeepSpeed strategy), ``engine`` (the DeepSpeed engine of the
    trained model), ``tokenizer`` (saved with HF checkpoints), ``train_dataset`` / ``eval_dataset`` and the
    ``collate_fn`` that batches their items, ``settings`` (the config sections the loop reads), ``logger``
    (the run's metrics logger), ``num_workers`` (DataLoader worker processes, --data.dataloader_num_workers)
    and ``token_counts`` (with --train.dynamic_batch_enable: items -> one ``{tokenisation: tokens}`` per
    item, every forward a micro-batch of them runs, e.g. a teacher's own tokenisation; default: the policy's
    tokens, :meth:`Trainer._item_tokens`)."""

    strategy: Any
    engine: Any
    tokenizer: Any
    train_dataset: Dataset
    collate_fn: Callable
    settings: LoopSettings
    logger: Any
    eval_dataset: Optional[Dataset] = None
    num_workers: int = 0
    token_counts: Optional[Callable[[List[dict]], List[Dict[str, int]]]] = None
    rounds: Optional["StepHook"] = None


class StepHook(Protocol):
    """Called before the loop reads the rows of each optimizer step (on-policy rounds replace rows there:
    :class:`~openrlhf.recipes.onpolicy.OnPolicyRounds`); returns metrics for that step, already reduced
    over processes."""

    def before_step(self, trainer: "Trainer", step: int) -> Dict[str, float]: ...

    def close(self) -> None:
        """After training (or when it stops): free what it holds (an inference engine)."""


class Trainer:
    """The loop over :class:`LoopParts`; a subclass adds its loss (see the module doc)."""

    # OpenRLHF's dashboard name of this trainer's loss (train/<name>, eval/eval <name>); see
    # openrlhf.utils.logging.dashboard_view.
    upstream_loss_name = "loss"

    def __init__(self, loop: LoopParts) -> None:
        self.strategy = strategy = loop.strategy
        self.token_counts = loop.token_counts or (lambda items: [{"policy": self._item_tokens(it)} for it in items])
        self.num_workers = loop.num_workers
        self.engine = loop.engine
        self.tokenizer = loop.tokenizer
        self.train_dataset = loop.train_dataset
        self.eval_dataset = loop.eval_dataset
        self.collate_fn = loop.collate_fn
        self.settings = settings = loop.settings
        self.logger = loop.logger
        self.rounds = loop.rounds
        self._orders: Dict[Tuple[int, int], List[int]] = {}  # (epoch, rank) -> that rank's order
        self.accum = strategy.accumulated_gradient
        self.steps_per_epoch = steps_per_epoch(len(loop.train_dataset), settings.train.batch_size)
        self.total_steps = self.steps_per_epoch * settings.train.max_epochs
        for line in self._data_notes():
            strategy.print(line)
        n_eval, need = len(self.eval_dataset or ()), strategy.world_size * self.eval_min_rows
        if self.eval_dataset is not None and n_eval < need:
            raise DataError(
                f"--eval.dataset: {n_eval} rows; this trainer evaluates micro-batches of at least "
                f"{self.eval_min_rows} rows on each of the {strategy.world_size} processes: give at least {need} rows"
            )

    def _data_notes(self) -> List[str]:
        """What the data report leaves unsaid about this run: rows that no epoch uses (a last global batch
        that is not full is dropped, as upstream) and, with dynamic batches, rows over the token budget."""
        train = self.settings.train
        n, bs = len(self.train_dataset), train.batch_size
        notes = []
        if n % bs:
            notes.append(
                f"data: {n} rows make {n // bs} global batches of --train.batch_size {bs}; each epoch "
                f"leaves the last {n % bs} rows of its (shuffled) order unused"
            )
        if train.dynamic_batch_enable:
            ds = self.train_dataset
            while isinstance(ds, WithKnownLogps):  # known log-probs (maybe remote): not needed to count tokens
                ds = ds.base
            chunks = [range(i, min(i + 1024, len(ds))) for i in range(0, len(ds), 1024)]
            sizes = [c for chunk in chunks for c in self.token_counts([ds[j] for j in chunk])]
            over = [max(c.values()) for c in sizes if max(c.values()) > train.max_tokens_per_gpu]
            if over:
                most = {k: max(c[k] for c in sizes) for k in sizes[0]}
                which = ", ".join(f"{k} up to {v}" for k, v in most.items() if v > train.max_tokens_per_gpu)
                notes.append(
                    f"warning: --train.max_tokens_per_gpu {train.max_tokens_per_gpu}: {len(over)} of {n} rows "
                    f"have more tokens ({which}); each of them makes a micro-batch of its own that "
                    f"exceeds the budget (a budget of at least {max(over)} keeps every micro-batch within it)"
                )
        return notes

    # ---- hooks ---------------------------------------------------------------------------
    def _loss_step(self, batch) -> Tuple[torch.Tensor, Dict[str, float]]:
        raise NotImplementedError

    def _eval_step(self, batch) -> Dict[str, float]:
        with torch.no_grad():
            return self._loss_step(batch)[1]

    def _begin_step(self, micro_batches: list) -> None:
        """Called with the micro-batches of one optimizer step before any forward."""

    def _micro_weight(self, batch, micro_batches: list) -> float:
        """With dynamic batches (micro-batches of different sizes): this micro-batch's share of the
        process's step, by which its loss and metrics are weighted (its rows / the step's rows; a
        trainer whose loss is already normalised for the whole step overrides it)."""
        return batch.rows / sum(b.rows for b in micro_batches)

    # ---- dynamic batches ---------------------------------------------------------------------
    @staticmethod
    def _item_tokens(item: dict) -> int:
        """Tokens the policy computes for one item (an SFT row, or a pair: prompt twice + both answers)."""
        if "input_ids" in item:
            return len(item["input_ids"])
        return 2 * len(item["prompt_ids"]) + len(item["chosen_ids"]) + len(item["rejected_ids"])

    def _token_budget_split(self, items: List[dict]) -> List[List[dict]]:
        """This process's rows of one step cut, in order, into micro-batches of at most
        ``--train.max_tokens_per_gpu`` tokens in every tokenisation they run (the policy's, and each
        teacher's own when it is scored here: ``token_counts``; a longer row alone), then split further
        until every process has as many micro-batches as the process that needs the most (ZeRO-3 runs its
        forward passes collectively)."""
        budget = self.settings.train.max_tokens_per_gpu
        groups: List[List[int]] = []  # positions in items
        counts = self.token_counts(items)
        used: Dict[str, int] = {}
        for pos, c in enumerate(counts):
            if groups and all(used[k] + n <= budget for k, n in c.items()):
                groups[-1].append(pos)
                used = {k: used[k] + n for k, n in c.items()}
            else:
                groups.append([pos])
                used = dict(c)

        def load(group: List[int]) -> int:  # the largest tokenisation of a micro-batch
            return max(sum(counts[p][k] for p in group) for k in counts[group[0]])

        k = int(self.strategy.all_reduce(float(len(groups)), op="max"))
        while len(groups) < k:  # split the micro-batch with the most tokens in two
            i = max((j for j in range(len(groups)) if len(groups[j]) > 1), key=lambda j: load(groups[j]))
            half = len(groups[i]) // 2
            groups[i : i + 1] = [groups[i][:half], groups[i][half:]]
        return [[items[p] for p in g] for g in groups]

    # ---- helpers -------------------------------------------------------------------------
    def step_positions(self, step: int, rank: Optional[int] = None) -> List[int]:
        """Positions in the training set of process ``rank``'s rows (default: this process's) of optimizer
        step ``step`` (counted from 0 over the whole run): the rows :meth:`_loader` gives that step."""
        epoch, k = divmod(step, self.steps_per_epoch)
        world = self.strategy.world_size
        key = (epoch, self.strategy.rank if rank is None else rank)
        if key not in self._orders:
            sampler = ResumableDistributedSampler(
                len(self.train_dataset), num_replicas=world, rank=key[1], seed=self.settings.train.seed, epoch=epoch
            )
            self._orders = {**{kk: v for kk, v in self._orders.items() if kk[0] == epoch}, key: list(sampler)}
        rows = self.settings.train.batch_size // world
        return self._orders[key][k * rows : (k + 1) * rows]

    def _to_device(self, batch):
        return batch.to(self.strategy.device)

    def _loader(
        self, dataset: Dataset, epoch: int, consumed: int, shuffle: bool, whole_step: bool = False
    ) -> DataLoader:
        """Micro-batches of ``--train.micro_batch_size`` rows; ``whole_step``: the process's rows of a
        whole optimizer step as a list of items (dynamic batches are cut from it)."""
        sampler = self.strategy.get_sampler(
            dataset, seed=self.settings.train.seed, consumed_samples=consumed, epoch=epoch, shuffle=shuffle
        )
        workers = dict(num_workers=self.num_workers, persistent_workers=False) if self.num_workers else {}
        if whole_step:
            rows = self.settings.train.batch_size // self.strategy.world_size
            return DataLoader(dataset, batch_size=rows, sampler=sampler, collate_fn=list, drop_last=True, **workers)
        return DataLoader(
            dataset,
            batch_size=self.settings.train.micro_batch_size,
            sampler=sampler,
            collate_fn=self.collate_fn,
            drop_last=True,
            **workers,
        )

    def _take_aux_loss(self):
        """``--model.aux_loss_coef`` x the router balancing loss of the policy's last forward (MoE
        models), or None; taken once."""
        actor = getattr(self.engine, "module", self.engine)
        take = getattr(actor, "take_aux_loss", None)
        return take() if take is not None else None

    def _save_checkpoint(self, step: int) -> None:
        state = ckpt_io.trainer_state(step, self.settings.train.batch_size, self.steps_per_epoch)
        if not self.settings.ckpt.disable_ds:
            self.strategy.save_ckpt(
                self.engine,
                self.settings.checkpoint_dir,
                step,
                state,
                self.settings.ckpt.max_num,
                max_gb=self.settings.ckpt.max_mem,
            )
        if self.settings.ckpt.save_hf:
            self.strategy.save_hf_model(
                self.engine, self.tokenizer, os.path.join(self.settings.checkpoint_dir, f"global_step{step}_hf")
            )

    # ---- loop ----------------------------------------------------------------------------
    def fit(self) -> Dict[str, float]:
        """Train to the end; returns the last step's metrics.

        Ctrl-C stops cleanly: a checkpoint being written is removed (the previous one and
        ``latest`` are untouched) and :class:`~openrlhf.utils.errors.Interrupted` says where
        the last complete checkpoint is."""
        self._bar = None
        try:
            return self._fit()
        except KeyboardInterrupt:
            if self._bar is not None:
                self._bar.close()  # ends the progress line, so the message below starts a line of its own
            raise Interrupted(self._interrupted_message()) from None
        finally:
            if self.rounds is not None:
                self.rounds.close()

    def _all_at_zero_lr(self, steps) -> bool:
        """True when the LR scheduler gives a learning rate of 0 at every one of ``steps`` (False when it
        cannot tell)."""
        sched = getattr(self.engine, "lr_scheduler", None)
        lambdas, base = getattr(sched, "lr_lambdas", None), getattr(sched, "base_lrs", None)
        if not lambdas or not base:
            return False
        return not any(b * lam(s) > 0 for s in steps for b, lam in zip(base, lambdas, strict=True))

    def _interrupted_message(self) -> str:
        ckpt_dir = self.settings.checkpoint_dir
        if self.strategy.is_rank_0():
            ckpt_io.remove_leftovers(ckpt_dir)
        tag = ckpt_io.find_latest_tag(ckpt_dir)
        if tag is None:
            return "no checkpoint was written (set --ckpt.save_steps to save resumable checkpoints)"
        return (
            f"the last complete checkpoint is {os.path.join(ckpt_dir, tag)}; resume with the same flags "
            "and --ckpt.load_enable"
        )

    def _fit(self) -> Dict[str, float]:
        step, epoch0, consumed0 = 0, 0, 0
        state = (
            self.strategy.load_ckpt(self.engine, self.settings.checkpoint_dir)
            if self.settings.ckpt.load_enable
            else None
        )
        if state is not None:
            step, epoch0, consumed0 = ckpt_io.resume_position(
                state, self.settings.train.batch_size, self.steps_per_epoch
            )
            self.strategy.print(
                f"resumed from {self.settings.checkpoint_dir} at step {step} (epoch {epoch0}, {consumed0} rows of it done)"
            )
        elif self.settings.ckpt.load_enable:
            self.strategy.print(
                f"--ckpt.load_enable: no checkpoint in {os.path.abspath(self.settings.checkpoint_dir)} "
                f"(--ckpt.path; default <ckpt.output_dir>/checkpoints), starting at step 0"
                f"{_openrlhf_default_hint()}"
            )
        # metrics.jsonl keeps what led to this state and nothing after it (a fresh run starts it anew).
        self.logger.truncate_after(step)
        if step < self.total_steps and self._all_at_zero_lr(range(step, self.total_steps)):
            self.strategy.print(
                f"warning: every optimizer step left to this run ({self.total_steps - step}) falls in "
                "the learning-rate warm-up at lr 0: the weights will not change and the saved model "
                "will equal the initial one (lower --lr_warmup_ratio, or train more steps)"
            )
        bs = self.settings.train.batch_size
        bar = self._bar = tqdm(
            total=self.total_steps,
            initial=step,
            desc="train",
            disable=not self.strategy.is_rank_0(),
            dynamic_ncols=True,
        )
        last: Dict[str, float] = {}
        lrs: List[float] = []  # the rate of each step this run trains
        dynamic = self.settings.train.dynamic_batch_enable
        for epoch in range(epoch0, self.settings.train.max_epochs):
            consumed = consumed0 if epoch == epoch0 else 0
            it = iter(self._loader(self.train_dataset, epoch, consumed, shuffle=True, whole_step=dynamic))
            for _ in range(consumed // bs, self.steps_per_epoch):
                t0 = time.perf_counter()
                extra = self.rounds.before_step(self, step) if self.rounds is not None else {}
                if dynamic:
                    micro = [self._to_device(self.collate_fn(g)) for g in self._token_budget_split(next(it))]
                else:
                    micro = [self._to_device(next(it)) for _ in range(self.accum)]
                tokens = [b.tokens.real_and_padded() for b in micro]
                # The policy computes (forwards, backwards, the optimizer step): a span of the timeline.
                span = timeline.begin("policy step")
                self.engine.train()
                self._begin_step(micro)
                lr = self.engine.get_lr()[0]  # the rate this step uses
                lrs.append(lr)
                records, weights = [], []
                for k, batch in enumerate(micro):
                    loss, metrics = self._loss_step(batch)
                    aux = self._take_aux_loss()
                    if aux is not None:  # MoE router balancing loss (--model.aux_loss_coef)
                        loss = loss + aux
                        metrics["aux_loss"] = float(aux.detach())
                    if dynamic:  # micro-batches of different sizes: weight them ourselves, DeepSpeed does not
                        w = self._micro_weight(batch, micro)
                        self.strategy.backward(loss * w, self.engine, boundary=k == len(micro) - 1)
                        weights.append(w)
                    else:
                        self.strategy.backward(loss, self.engine)
                        self.strategy.optimizer_step(self.engine)
                    records.append(metrics)
                if dynamic:
                    self.strategy.optimizer_step(self.engine)
                    metrics = self.strategy.all_reduce(
                        {key: sum(w * r[key] for w, r in zip(weights, records, strict=True)) for key in records[0]}
                    )
                else:
                    metrics = self.strategy.all_reduce(mean_metrics(records))
                timeline.end(span)
                step += 1
                consumed += bs
                metrics["lr"] = lr
                metrics.update(extra)
                # Throughput: the policy's real tokens and the tokens its forward computed (padding
                # included), all processes together, and the wall time of the step.
                metrics["tokens"] = self.strategy.all_reduce(float(sum(t[0] for t in tokens)), op="sum")
                metrics["padded_tokens"] = self.strategy.all_reduce(float(sum(t[1] for t in tokens)), op="sum")
                metrics["step_seconds"] = self.strategy.all_reduce(time.perf_counter() - t0, op="max")
                grad_norm = self.strategy.grad_norm(self.engine)
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm
                metrics["epoch"] = epoch
                last = metrics
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if step % self.settings.logger.logging_steps == 0:
                    self.logger.log(step, metrics, self.upstream_loss_name)
                if (
                    self.eval_dataset is not None
                    and self.settings.eval.steps > 0
                    and step % self.settings.eval.steps == 0
                ):
                    self.logger.log(step, self.evaluate(), self.upstream_loss_name)
                if self.settings.ckpt.save_steps > 0 and step % self.settings.ckpt.save_steps == 0:
                    self._save_checkpoint(step)
            if self.eval_dataset is not None and self.settings.eval.steps == -1:
                self.logger.log(step, self.evaluate(), self.upstream_loss_name)
        bar.close()
        if lrs and max(lrs) == 0.0:
            self.strategy.print(
                f"note: all {len(lrs)} optimizer steps of this run had lr 0 (learning-rate warm-up): "
                "the weights did not change; the saved model equals the initial one"
            )
        return last

    # The fewest rows an evaluation micro-batch may hold (KTO's reference point needs 2): a last, smaller
    # micro-batch joins the one before it.
    eval_min_rows = 1

    def _eval_chunks(self) -> List[List[int]]:
        """This process's evaluation rows (every ``world``-th of all of them: no row left out) cut into
        micro-batches of ``--train.micro_batch_size``; every process gets as many micro-batches (their
        forwards run together under ZeRO-3): a process with fewer gets empty ones (run on a stand-in row,
        weight 0)."""
        world, rank = self.strategy.world_size, self.strategy.rank
        mine = list(range(rank, len(self.eval_dataset), world))
        size = self.settings.train.micro_batch_size
        chunks = [mine[k : k + size] for k in range(0, len(mine), size)]
        if len(chunks) > 1 and len(chunks[-1]) < self.eval_min_rows:
            chunks[-2:] = [chunks[-2] + chunks[-1]]
        most = int(self.strategy.all_reduce(float(len(chunks)), op="max"))
        return chunks + [[] for _ in range(most - len(chunks))]

    def evaluate(self) -> Dict[str, float]:
        """Every row of the evaluation set once, the metrics of each micro-batch weighted by its rows."""
        self.engine.eval()
        sums: Dict[str, float] = {}
        rows = 0
        stand_in = list(range(min(self.eval_min_rows, len(self.eval_dataset))))
        for chunk in tqdm(self._eval_chunks(), desc="eval", disable=not self.strategy.is_rank_0(), leave=False):
            batch = self.collate_fn([self.eval_dataset[i] for i in (chunk or stand_in)])
            metrics = self._eval_step(self._to_device(batch))
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(chunk)
            rows += len(chunk)
        self.engine.train()
        total = self.strategy.all_reduce(float(rows), op="sum")
        if not total:
            return {}
        sums = self.strategy.all_reduce(sums, op="sum")
        return {f"eval_{k}": v / total for k, v in sums.items()}
