"""Every evaluation: offline metrics against the teacher (``offline``: ROUGE-L, teacher NLL; ``evaluate_responses``),
judged ones (in-domain win rate vs the teacher, MT-Bench, AlpacaEval) against any OpenAI-compatible judge endpoint
(``run``: judge, write_prompts; ``client``: JudgeClient; ``data``, ``judged``), the reports (``report``) and charts
(``plots``)."""
