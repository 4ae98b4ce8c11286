"""Judged evaluations (in-domain win rate vs the teacher, MT-Bench, AlpacaEval) against any
OpenAI-compatible judge endpoint. Light on import: names resolve lazily."""

from openrlhf.utils.lazy import lazy_exports

_EXPORTS = {
    "JudgeClient": ".client",
    "judge": ".run",
    "write_prompts": ".run",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
