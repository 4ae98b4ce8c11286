"""One call for the CLIs: load rows, tokenize, return the dataset (prints nothing)."""

from __future__ import annotations

from typing import Optional

from openrlhf.datasets.preference_dataset import PreferenceDataset
from openrlhf.datasets.sft_dataset import SFTDataset

from .loading import DataError, load_sources

KINDS = ("sft", "preference")


def build_dataset(
    kind: str,
    data_cfg,
    tokenizer,
    *,
    dataset: Optional[str] = None,
    split: Optional[str] = None,
    max_samples: Optional[int] = None,
    model_path: Optional[str] = None,
    what: str = "--data.dataset",
    seed: int = 42,
    pretrain: bool = False,
):
    """An :class:`SFTDataset` (``kind="sft"``) or :class:`PreferenceDataset` (``"preference"``).

    ``dataset`` / ``split`` / ``max_samples`` default to ``data_cfg.dataset`` /
    ``data_cfg.dataset_split`` / ``data_cfg.max_samples`` (pass e.g. the eval set and
    ``what="--eval.dataset"`` for evaluation data). Several comma-separated sources are joined,
    or mixed by ``data_cfg.dataset_probs`` with ``seed`` (training data only; see
    :func:`~openrlhf.datasets.loading.load_sources`). ``pretrain``: SFT rows as plain text with
    the loss on every token. The caller prints ``report()``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    source = data_cfg.dataset if dataset is None else dataset
    split = data_cfg.dataset_split if split is None else split
    max_samples = data_cfg.max_samples if max_samples is None else max_samples
    probs = getattr(data_cfg, "dataset_probs", ()) if dataset is None else ()
    rows = load_sources(source, split=split, max_samples=max_samples, probs=probs, seed=seed, what=what)
    if kind == "sft":
        return SFTDataset(rows, tokenizer, data_cfg, source, model_path=model_path, pretrain=pretrain)

    return PreferenceDataset(rows, tokenizer, data_cfg, source, model_path=model_path)


__all__ = ["build_dataset", "DataError", "KINDS"]
