"""Which source gives each frozen model's log-probs, decided once per split before any model is loaded:
cached columns when the rows carry them (checked row by row against the model, the tokenisation and the
row's text), else a served model's answers (asked here, before training), else online, or, with a remote
provider (the Ray trainers), remote."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from openrlhf.datasets.loading import split_sources
from openrlhf.datasets.preference_data import PairSplit
from openrlhf.datasets.preference_dataset import rendered_pairs
from openrlhf.datasets.tokenizer import check_reference_tokenizer
from openrlhf.utils.errors import DataError

from . import cache as lc
from .frozen import REF, FrozenModel
from .known import CachedTable, LogpProvider, WithKnownLogps
from .score import frozen_dataset
from .served import ServedModel, check_lengths, check_probe, pair_ids


@dataclass
class SplitLogps:
    """One split with its log-prob sources: ``dataset`` (the kept pairs; items carry the cached and remote
    log-probs), ``online`` (the models whose log-probs are not cached: computed in the training process, or
    by ``remote``), ``reports`` (one line per cached model)."""

    dataset: Any
    online: List[str]
    reports: List[str]


def _cached_values(split: PairSplit, model: FrozenModel, keys: Sequence[str]) -> Dict[int, tuple]:
    """The checked cached columns of ``model`` for the split's kept rows."""
    if len(split_sources(split.source)) > 1:
        raise DataError(
            f"{split.what} {split.source}: rows with cached log-prob columns come from several sources; "
            "cached log-probs are checked against one scored file: score one joined file "
            "(score_logps), or drop the cached columns and score online"
        )
    renderer = model.renderer if model.renderer is not None else split.dataset.renderer
    if model.served is not None:
        served = ServedModel(model.served)
        check_probe(lc.scored_folder(split.source), served, f"{split.what} {split.source}")
        model_fp, flag = served.fingerprint(), model.served.flag
    else:
        model_fp, flag = lc.model_fingerprint(model.model_path, model.flag, lc.digests_near(split.source)), model.flag
    fp = lc.setting_fingerprint(model_fp, lc.tokenization_fingerprint(renderer, model.max_len))
    return lc.load_cached(split.rows, model.name, fp, keys, split.source, split.needed, flag)


def _served_values(split: PairSplit, model: FrozenModel, data_cfg, policy_path: str, log) -> Dict[int, tuple]:
    """The served model's log-probs of the split's needed rows, asked now (``concurrency`` pairs at a time)."""
    served = ServedModel(model.served, log=log)
    ds = frozen_dataset(model, split.rows, split.dataset.renderer.tokenizer, data_cfg, policy_path, split.source)
    items = {it["index"]: it for it in (ds[k] for k in range(len(ds)))}
    needed = [i for i in split.needed if i in items]
    if len(needed) < len(split.needed):
        missing = [i + 1 for i in split.needed if i not in items][:5]
        raise DataError(f"{split.what} {split.source}: rows {missing} cannot be tokenised for {model.name}")
    pairs = {i: pair_ids(items[i]) for i in needed}
    check_lengths(served, pairs, f"{split.what} {split.source}")
    return served.score(pairs, f"{split.source}: {model.name} log-probs")


def choose_sources(
    split: PairSplit,
    models: Sequence[FrozenModel],
    data_cfg,
    policy_path: str,
    remote: Optional[LogpProvider] = None,
    log: Callable[[str], None] = print,
) -> SplitLogps:
    """Decide, for each of ``models``, where its log-probs of ``split`` come from (see the module doc);
    an online reference is checked to share the policy's tokenizer (it reads the policy's token ids)."""
    keys = (data_cfg.prompt_key, data_cfg.chosen_key, data_cfg.rejected_key)
    cached: Dict[str, Dict[int, tuple]] = {}
    online: List[str] = []
    reports: List[str] = []
    for model in models:
        if lc.has_cache(split.rows, model.name):
            cached[model.name] = _cached_values(split, model, keys)
            what = "reference" if model.name == REF else f"{model.name} ({model.model_path})"
            reports.append(f"{split.source}: using cached {what} log-probs (that model is not loaded for it)")
        elif model.served is not None:
            cached[model.name] = _served_values(split, model, data_cfg, policy_path, log)
            reports.append(f"{split.source}: {model.name} log-probs asked from {model.served.base_url} (not loaded)")
        else:
            online.append(model.name)
            if model.name == REF:
                pairs = rendered_pairs(split.dataset, split.keep)
                check_reference_tokenizer(split.dataset.renderer, pairs, model.model_path, policy_path, model.flag)
    view = split.view()
    if cached:
        view = WithKnownLogps(view, CachedTable(cached), list(cached))
    if remote is not None and online:
        view = WithKnownLogps(view, remote, online)
    return SplitLogps(view, online, reports)
