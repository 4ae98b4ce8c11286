"""SFT and preference datasets (policy and teacher tokenisation).

Light on import: names are resolved lazily, so ``import openrlhf.datasets`` pulls
in neither torch nor transformers nor datasets.
"""

from importlib import import_module

_EXPORTS = {
    "DataError": "loading",
    "load_rows": "loading",
    "PromptRenderer": "templates",
    "resolve_pair": "templates",
    "tokenize_pair": "templates",
    "SFTDataset": "sft_dataset",
    "sft_collate": "sft_dataset",
    "PreferenceDataset": "preference_dataset",
    "preference_collate": "preference_dataset",
    "pair_batch": "preference_dataset",
    "build_dataset": "build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
