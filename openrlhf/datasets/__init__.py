"""SFT and preference datasets (policy and teacher tokenisation).

Light on import: names are resolved lazily, so ``import openrlhf.datasets`` pulls
in neither torch nor transformers nor datasets.
"""

from openrlhf.utils.lazy import lazy_exports

_EXPORTS = {
    "DataError": ".loading",
    "load_rows": ".loading",
    "PromptRenderer": ".templates",
    "resolve_pair": ".templates",
    "tokenize_pair": ".templates",
    "SFTDataset": ".sft_dataset",
    "sft_collate": ".sft_dataset",
    "PreferenceDataset": ".preference_dataset",
    "preference_collate": ".preference_dataset",
    "pair_batch": ".preference_dataset",
    "build_dataset": ".build",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
