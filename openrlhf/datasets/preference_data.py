"""Preference data for DPO / daDPO: the dataset, the pairs a teacher can score, cached log-probs.

Policy of this module (what :func:`prepare_preference_data` keeps and why, all reported):

- rows are tokenised for the policy by :class:`~openrlhf.datasets.PreferenceDataset`
  (its own drops and truncations are in its report);
- with a teacher, a pair whose response was cut to ``--data.max_len`` for the policy is
  left out: the teacher scores whole responses, so a cut pair would compare different
  texts;
- cached reference / teacher log-probs (columns written by ``score_logps``) are used when
  present, after checking each needed row's fingerprint against the model, the
  tokenisation and the row's text; the model is then not loaded for that side;
- with a ``remote`` provider (the Ray trainers: frozen actor groups score the rows), every side
  that is not cached is read from it instead of being computed here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from openrlhf.datasets import logp_cache as lc
from openrlhf.datasets.loading import load_sources, split_sources
from openrlhf.datasets.logp_cache import add_cached_to_batch
from openrlhf.datasets.packing import pack_batch
from openrlhf.datasets.preference_dataset import (
    PreferenceDataset,
    pair_tokens,
    preference_collate,
    rendered_pair_tokens,
    rendered_pairs,
)
from openrlhf.datasets.tokenizer import check_reference_tokenizer, pad_token_id

from .loading import DataError


class Subset:
    """A view of a dataset restricted to some of its items (``keep``: indices into ``base``)."""

    def __init__(self, base, keep: Sequence[int]):
        self.base, self.keep = base, list(keep)

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int):
        return self.base[self.keep[i]]


@dataclass
class ScoredSide:
    """A frozen model whose log-probs the loss needs: ``kind`` (``ref`` / ``teacher``), its
    model path and flag, and how pairs are tokenised for it (``renderer``, ``max_len``:
    None for a teacher, which scores whole responses)."""

    kind: str
    model_path: str
    flag: str
    renderer: Any
    max_len: Optional[int]


class PairTokenCounts:
    """The tokens each tokenisation of a training micro-batch computes, per pair: the policy's (which the
    reference and a dDPO+KL teacher read too: ``policy``) and each teacher scored online in this process,
    in that teacher's own tokenizer and chat template, whole responses (``teacher``, ``teacher_2``, ...).
    A teacher whose log-probs are cached or scored elsewhere (the Ray groups) runs no forward here and is
    not counted. What ``--train.dynamic_batch_enable`` budgets (:class:`~openrlhf.trainer.base.Trainer`).

    Called with a list of items of one dataset (the training set), it returns one ``{tokenisation: tokens}``
    per item; a teacher's counts are kept by row index, so each row is rendered for it once."""

    def __init__(self, teachers: Dict[str, Any]):
        self.teachers = dict(teachers)
        self._known: Dict[str, Dict[int, int]] = {name: {} for name in self.teachers}

    def __call__(self, items: Sequence[dict]) -> List[Dict[str, int]]:
        out = [{"policy": pair_tokens(it["prompt_ids"], it["chosen_ids"], it["rejected_ids"])} for it in items]
        for name, renderer in self.teachers.items():
            known = self._known[name]
            new = list({it["index"]: it for it in items if it["index"] not in known}.values())
            if new:
                known.update(zip([it["index"] for it in new], rendered_pair_tokens(renderer, new), strict=True))
            for counts, it in zip(out, items, strict=True):
                counts[name] = known[it["index"]]
        return out


@dataclass
class PreferenceData:
    train: Any
    eval: Optional[Any]
    collate: Callable
    reports: List[str]
    # The sides (``ref``, ``teacher``, ``teacher_2``, ...) whose log-probs are not cached: their
    # models must be loaded.
    online: List[str]
    # The sides a remote provider scores (then ``online`` is empty).
    remote: List[str] = dataclasses.field(default_factory=list)
    # Tokens per tokenisation of training items (the budget of --train.dynamic_batch_enable).
    token_counts: Optional[Callable] = None

    @property
    def need_ref_model(self) -> bool:
        return "ref" in self.online


def _split(
    data_cfg,
    tokenizer,
    model_path: str,
    sides: Sequence[ScoredSide],
    source: str,
    split: str,
    what: str,
    probs: Sequence[float] = (),
    seed: int = 42,
    remote=None,
):
    """One split: (dataset view, report lines, kinds whose model must be loaded or ``remote`` scores)."""
    rows = load_sources(source, split=split, max_samples=data_cfg.max_samples, probs=probs, seed=seed, what=what)
    ds = PreferenceDataset(rows, tokenizer, data_cfg, source, model_path=model_path)
    reports = [ds.report()]
    keep = list(range(len(ds)))
    if any(s.kind.startswith("teacher") for s in sides):
        keep = [i for i in keep if not (ds[i]["chosen_truncated"] or ds[i]["rejected_truncated"])]
        if len(keep) < len(ds):
            reports.append(
                f"{source}: daDPO leaves out {len(ds) - len(keep)} pairs whose response was truncated "
                f"to --data.max_len {data_cfg.max_len} (the teacher scores whole responses)"
            )
    if not keep:
        raise DataError(f"{source}: no pairs left for training: " + "; ".join(reports))
    needed = [ds[i]["index"] for i in keep]
    keys = (data_cfg.prompt_key, data_cfg.chosen_key, data_cfg.rejected_key)
    caches, online = [], []
    for side in sides:
        if lc.has_cache(rows, side.kind):
            if len(split_sources(source)) > 1:
                raise DataError(
                    f"{what} {source}: rows with cached log-prob columns come from several sources; "
                    "cached log-probs are checked against one scored file: score one joined file "
                    "(score_logps), or drop the cached columns and score online"
                )
            renderer = side.renderer if side.renderer is not None else ds.renderer
            fp = lc.setting_fingerprint(
                lc.model_fingerprint(side.model_path, side.flag, lc.digests_near(source)),
                lc.tokenization_fingerprint(renderer, side.max_len),
            )
            caches.append(lc.load_cached(rows, side.kind, fp, keys, source, needed, side.flag))
            name = "reference" if side.kind == "ref" else f"{side.kind} ({side.model_path})"
            reports.append(f"{source}: using cached {name} log-probs (that model is not loaded for it)")
        else:
            online.append(side.kind)
            if side.kind == "ref":  # fed the policy's token ids: its tokenizer must be the policy's
                check_reference_tokenizer(ds.renderer, rendered_pairs(ds, keep), side.model_path, model_path, side.flag)
    view = Subset(ds, keep) if len(keep) < len(ds) else ds
    if caches:
        view = lc.WithCachedLogps(view, caches)
    if remote is not None and online:
        view = lc.WithRemoteLogps(view, remote, online)
    return view, reports, online


def prepare_preference_data(
    data_cfg,
    eval_cfg,
    tokenizer,
    model_path: str,
    sides: Sequence[ScoredSide],
    extra_collate: Optional[Callable] = None,
    packing: bool = False,
    seed: int = 42,
    remote=None,
) -> PreferenceData:
    """Train (and eval, when ``eval_cfg.dataset``) preference data with the collate function
    that adds what the loss needs: each teacher's own tokenisation when that teacher runs
    online (its side's ``renderer``), cached log-prob columns otherwise; ``extra_collate(items,
    batch)`` may add more (KTO's mismatched pairs). ``packing``: every tokenisation of the batch
    packed into one row (:mod:`openrlhf.datasets.packing`)."""
    train, reports, online = _split(
        data_cfg,
        tokenizer,
        model_path,
        sides,
        data_cfg.dataset,
        data_cfg.dataset_split,
        "--data.dataset",
        data_cfg.dataset_probs,
        seed,
        remote=remote,
    )
    # The teachers whose forward runs on training batches here (the budget of dynamic batches counts them).
    train_teachers = {s.kind: s.renderer for s in sides if s.kind in online and s.kind != "ref" and remote is None}
    ev = None
    if eval_cfg is not None and eval_cfg.dataset:
        if remote is not None:
            raise DataError(
                "--eval.dataset: the Ray trainers do not evaluate during training yet; evaluate the "
                "saved model afterwards (python -m openrlhf.cli.evaluate / judge)"
            )
        ev, ev_reports, ev_online = _split(
            data_cfg, tokenizer, model_path, sides, eval_cfg.dataset, eval_cfg.split, "--eval.dataset"
        )
        reports += ["eval: " + r for r in ev_reports]
        online += [kind for kind in ev_online if kind not in online]
    if remote is not None:
        collate = _collate(tokenizer, {}, extra_collate, packing)
        return PreferenceData(train, ev, collate, reports, [], online, token_counts=PairTokenCounts(train_teachers))
    online_teachers = {s.kind: s.renderer for s in sides if s.kind in online and s.kind != "ref"}
    return PreferenceData(
        train,
        ev,
        _collate(tokenizer, online_teachers, extra_collate, packing),
        reports,
        online,
        token_counts=PairTokenCounts(train_teachers),
    )


def _collate(tokenizer, online_teachers: dict, extra_collate: Optional[Callable], packing: bool) -> Callable:
    """The collate function: the policy's batch, each online teacher's own tokenisation, the cached (or
    remote) log-prob columns, ``extra_collate``'s keys; packed when ``packing``."""
    pad_id = pad_token_id(tokenizer)
    prefixes = [""] + [name + "_" for name in online_teachers]

    def collate(items):
        batch = add_cached_to_batch(preference_collate(items, pad_id, teacher_renderers=online_teachers), items)
        if extra_collate is not None:
            batch = extra_collate(items, batch)
        return pack_batch(batch, prefixes) if packing else batch

    return collate
