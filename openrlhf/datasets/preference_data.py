"""Preference data for DPO / daDPO: the pairs of one split, the pairs a teacher can score, the collate.

Policy of this module (what :func:`load_pairs` keeps and why, all reported):

- rows are tokenised for the policy by :class:`~openrlhf.datasets.PreferenceDataset`
  (its own drops and truncations are in its report);
- with a teacher, a pair whose response was cut to ``--data.max_len`` for the policy is
  left out: the teacher scores whole responses, so a cut pair would compare different
  texts.

Where each frozen model's log-probs come from (cached columns, online, remote) is decided by
:mod:`openrlhf.logps.choose`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from openrlhf.datasets.batch import PairBatch
from openrlhf.datasets.loading import load_sources
from openrlhf.datasets.preference_dataset import (
    PreferenceDataset,
    pair_tokens,
    preference_collate,
    rendered_pair_tokens,
)
from openrlhf.datasets.tokenizer import pad_token_id
from openrlhf.utils.errors import DataError


class Subset:
    """A view of a dataset restricted to some of its items (``keep``: indices into ``base``)."""

    def __init__(self, base, keep: Sequence[int]):
        self.base, self.keep = base, list(keep)

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int):
        return self.base[self.keep[i]]


class Regenerated:
    """A pair dataset whose rejected responses can be replaced (on-policy rounds): ``replace(answers)`` with
    ``{position: answer}``, each answer the fields of an item's rejected side (``rejected``,
    ``rejected_ids``, ``rejected_unfinished``, ``rejected_truncated``) and the ``round`` that made it; items
    without one are the base dataset's."""

    def __init__(self, base):
        self.base = base
        self.answers: Dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        item.update(self.answers.get(i, {}))
        return item

    def replace(self, answers: Dict[int, dict]) -> None:
        self.answers.update(answers)


class PairTokenCounts:
    """The tokens each tokenisation of a training micro-batch computes, per pair: the policy's (which the
    reference and a dDPO+KL teacher read too: ``policy``) and each teacher scored online in this process,
    in that teacher's own tokenizer and chat template, whole responses (``teacher``, ``teacher_2``, ...).
    A teacher whose log-probs are cached or scored elsewhere (the Ray groups) runs no forward here and is
    not counted. What ``--train.dynamic_batch_enable`` budgets (:class:`~openrlhf.trainer.base.Trainer`).

    Called with a list of items of one dataset (the training set), it returns one ``{tokenisation: tokens}``
    per item; a teacher's counts are kept by row index (and on-policy round), so each row is rendered for it once."""

    def __init__(self, teachers: Dict[str, Any]):
        self.teachers = dict(teachers)
        self._known: Dict[str, Dict[Tuple[int, int], int]] = {name: {} for name in self.teachers}

    @staticmethod
    def _key(item: dict) -> Tuple[int, int]:
        """A row's rejected side differs per on-policy round (:class:`Regenerated`)."""
        return item["index"], item.get("round", -1)

    def __call__(self, items: Sequence[dict]) -> List[Dict[str, int]]:
        out = [{"policy": pair_tokens(it["prompt_ids"], it["chosen_ids"], it["rejected_ids"])} for it in items]
        for name, renderer in self.teachers.items():
            known = self._known[name]
            new = list({self._key(it): it for it in items if self._key(it) not in known}.values())
            if new:
                known.update(zip([self._key(it) for it in new], rendered_pair_tokens(renderer, new), strict=True))
            for counts, it in zip(out, items, strict=True):
                counts[name] = known[self._key(it)]
        return out


@dataclass
class PairSplit:
    """One split's pairs: its ``source`` (and the flag ``what`` that named it), the loaded ``rows``, the
    policy's :class:`PreferenceDataset` and the positions in it that are kept (``keep``), with the reports of
    what was dropped or cut."""

    source: str
    what: str
    rows: List[dict]
    dataset: PreferenceDataset
    keep: List[int]
    reports: List[str]

    @property
    def needed(self) -> List[int]:
        """The original row indices of the kept pairs."""
        return [self.dataset[i]["index"] for i in self.keep]

    def view(self):
        """The kept pairs as a dataset."""
        return Subset(self.dataset, self.keep) if len(self.keep) < len(self.dataset) else self.dataset


def load_pairs(
    data_cfg,
    tokenizer,
    model_path: str,
    source: str,
    split: str,
    what: str,
    probs: Sequence[float] = (),
    seed: int = 42,
    whole_responses: bool = False,
) -> PairSplit:
    """Load and tokenise one split; ``whole_responses`` (a teacher scores the pairs): leave out the pairs
    whose response the policy's --data.max_len cut."""
    rows = load_sources(source, split=split, max_samples=data_cfg.max_samples, probs=probs, seed=seed, what=what)
    ds = PreferenceDataset(rows, tokenizer, data_cfg, source, model_path=model_path)
    reports = [ds.report()]
    keep = list(range(len(ds)))
    if whole_responses:
        keep = [i for i in keep if not (ds[i]["chosen_truncated"] or ds[i]["rejected_truncated"])]
        if len(keep) < len(ds):
            reports.append(
                f"{source}: daDPO leaves out {len(ds) - len(keep)} pairs whose response was truncated "
                f"to --data.max_len {data_cfg.max_len} (the teacher scores whole responses)"
            )
    if not keep:
        raise DataError(f"{source}: no pairs left for training: " + "; ".join(reports))
    return PairSplit(source, what, rows, ds, keep, reports)


def pair_collate(
    tokenizer,
    own_renderers: Dict[str, Any],
    extra: Optional[Callable[[Sequence[dict], PairBatch], PairBatch]] = None,
    packing: bool = False,
) -> Callable[[Sequence[dict]], PairBatch]:
    """The collate function of a preference run: the policy's batch with each teacher scored in the
    training process in its own tokenisation (``own_renderers``: name -> renderer) and the items' known
    log-probs; ``extra(items, batch)`` may add more (KTO's mismatched pairs); every tokenisation packed
    when ``packing``."""
    pad_id = pad_token_id(tokenizer)

    def collate(items: Sequence[dict]) -> PairBatch:
        batch = preference_collate(items, pad_id, teacher_renderers=own_renderers)
        if extra is not None:
            batch = extra(items, batch)
        return batch.packed() if packing else batch

    return collate
