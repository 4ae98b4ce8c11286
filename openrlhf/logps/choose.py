"""Which source gives each frozen model's log-probs, decided once per split before any model is loaded:
cached columns when the rows carry them (checked row by row against the model, the tokenisation and the
row's text), else online, or, with a remote provider (the Ray trainers), remote."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from openrlhf.datasets.loading import split_sources
from openrlhf.datasets.preference_data import PairSplit
from openrlhf.datasets.preference_dataset import rendered_pairs
from openrlhf.datasets.tokenizer import check_reference_tokenizer
from openrlhf.utils.errors import DataError

from . import cache as lc
from .frozen import REF, FrozenModel
from .known import CachedTable, LogpProvider, WithKnownLogps


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
    fp = lc.setting_fingerprint(
        lc.model_fingerprint(model.model_path, model.flag, lc.digests_near(split.source)),
        lc.tokenization_fingerprint(renderer, model.max_len),
    )
    return lc.load_cached(split.rows, model.name, fp, keys, split.source, split.needed, model.flag)


def choose_sources(
    split: PairSplit, models: Sequence[FrozenModel], data_cfg, policy_path: str, remote: Optional[LogpProvider] = None
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
