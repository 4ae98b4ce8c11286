"""Plain functions that build data, models and a trainer from a task's config and run it.

``cli/`` parses flags and calls exactly one of these; ``pipeline/`` composes them.
Tests call them directly. Light on import: names resolve lazily.
"""

from openrlhf.utils.lazy import lazy_exports

_EXPORTS = {
    "train_sft": ".sft",
    "train_kd": ".kd",
    "train_dpo": ".preference",
    "train_dadpo": ".preference",
    "train_kto": ".preference",
    "score_logps": ".score",
    "generate": ".generate",
    "train_dpo_ray": ".ray_preference",
    "train_dadpo_ray": ".ray_preference",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
