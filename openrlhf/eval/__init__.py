"""Judged evaluations (in-domain win rate vs the teacher, MT-Bench, AlpacaEval) against any OpenAI-compatible judge
endpoint: ``openrlhf.eval.run`` (judge, write_prompts), ``.client`` (JudgeClient), ``.judged``, ``.report``."""
