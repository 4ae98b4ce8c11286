"""``python -m openrlhf.cli.judge``: one judged evaluation of candidate response files.

    --task indomain    each candidate vs the teacher's responses (same ids, same prompts)
    --task mtbench     each candidate's two-turn MT-Bench answers, graded 1-10
    --task alpacaeval  each candidate vs the reference outputs (default: AlpacaEval's GPT-4 baseline)

Response files are ``generate`` outputs (``id``, the prompt, ``response``; for MT-Bench ``turns`` and
``responses``). Every file is read and checked, and the endpoint answers one test request, before
any judgment is requested. Results are merged into ``<output_dir>/report.json`` (model -> task ->
numbers; run the command once per task into the same folder), with ``report.md`` (the paper's
Table 1 layout), ``report.png`` and ``judgments_<task>.jsonl`` (every verdict, for auditing).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Tuple

from openrlhf.config.schema import JudgeTaskConfig
from openrlhf.config.validate import parse_named_files
from openrlhf.utils.errors import DataError


def parse_candidates(values) -> Dict[str, str]:
    """``NAME=FILE`` values -> {name: file}; DataError naming the bad value."""
    out, problems = parse_named_files(values)
    if problems:
        raise DataError(problems[0])
    return out


def _question_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    msgs = [prompt] if isinstance(prompt, dict) else list(prompt)
    if len(msgs) == 1:
        return str(msgs[0].get("content", ""))
    return "\n\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in msgs)


def _read(path: str, what: str, keys: Tuple[str, ...]) -> Dict[str, dict]:
    from openrlhf.datasets import load_rows

    rows = load_rows(path, what=what)
    out: Dict[str, dict] = {}
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise DataError(f"{what} {path}: row {i + 1} has no {missing} key(s) (keys: {sorted(row)[:10]})")
        rid = str(row["id"])
        if rid in out:
            raise DataError(f"{what} {path}: id {row['id']!r} appears twice")
        out[rid] = dict(row, _row=i + 1)
    return out


# ---- building the items (all checks before any request) -------------------------------------------------


def _indomain_items(cfg: JudgeTaskConfig, candidates: Dict[str, str]):
    from openrlhf.eval.judged import PairItem
    from openrlhf.generation.outputs import check_same_ids, read_responses

    if not cfg.teacher_responses:
        raise DataError("--teacher_responses: required for --task indomain (the teacher's responses to the same prompts)")
    teacher = read_responses(cfg.teacher_responses, "--teacher_responses")
    if cfg.prompts:
        from openrlhf.datasets import load_rows

        known = {str(r.get("id", i)) for i, r in enumerate(load_rows(cfg.prompts, what="--prompts"))}
        unknown = [i for i in teacher if i not in known]
        if unknown:
            raise DataError(f"--teacher_responses {cfg.teacher_responses}: {len(unknown)} ids are not held-out prompts "
                            f"of --prompts {cfg.prompts} (e.g. {unknown[:3]})")
    ids = list(teacher)[: cfg.max_items] if cfg.max_items > 0 else list(teacher)
    out = {}
    for name, path in candidates.items():
        rows = read_responses(path, f"--candidate {name}")
        check_same_ids(teacher, rows, name, path)
        out[name] = [PairItem(i, _question_text(teacher[i]["prompt"]), str(rows[i]["response"]),
                              str(teacher[i]["response"])) for i in ids]
    return out


def _alpaca_items(cfg: JudgeTaskConfig, candidates: Dict[str, str]):
    from openrlhf.eval.data import alpaca_reference
    from openrlhf.eval.judged import PairItem

    ref = alpaca_reference(cfg.reference_outputs or None)
    n = min(len(ref), cfg.max_items) if cfg.max_items > 0 else len(ref)
    out = {}
    for name, path in candidates.items():
        rows = _read(path, f"--candidate {name}", ("id", "prompt", "response"))
        items = []
        for k in range(n):
            row = rows.get(str(k))
            if row is None:
                raise DataError(f"--candidate {name}={path}: no response for AlpacaEval instruction {k} (id {k}); "
                                "generate answers from the prompt file of `python -m openrlhf.cli.eval_prompts "
                                "--task alpacaeval`")
            if row["prompt"] != ref[k]["instruction"]:
                raise DataError(f"--candidate {name}={path}: row {row['_row']} (id {k}) answers another instruction "
                                "than AlpacaEval's")
            items.append(PairItem(str(k), ref[k]["instruction"], str(row["response"]), str(ref[k]["output"])))
        out[name] = items
    return out, ref[:n]


def _mtbench_items(cfg: JudgeTaskConfig, candidates: Dict[str, str]):
    from openrlhf.eval.data import mtbench_questions
    from openrlhf.eval.judged import MTBenchAnswer

    questions = mtbench_questions()
    if cfg.max_items > 0:
        questions = questions[: cfg.max_items]
    out = {}
    for name, path in candidates.items():
        rows = _read(path, f"--candidate {name}", ("id", "turns", "responses"))
        answers = []
        for q in questions:
            row = rows.get(str(q["question_id"]))
            if row is None:
                raise DataError(f"--candidate {name}={path}: no answers to MT-Bench question {q['question_id']}; "
                                "generate them from the prompt file of `python -m openrlhf.cli.eval_prompts --task "
                                "mtbench`")
            if list(row["turns"]) != list(q["turns"]) or len(row["responses"]) != len(q["turns"]):
                raise DataError(f"--candidate {name}={path}: row {row['_row']} (question {q['question_id']}) does "
                                "not hold the two answers to MT-Bench's two turns of that question")
            answers.append(MTBenchAnswer(int(q["question_id"]), q["category"], list(q["turns"]),
                                         [str(x) for x in row["responses"]]))
        out[name] = answers
    return out


# ---- the whole job ---------------------------------------------------------------------------------------


def judge(cfg: JudgeTaskConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Judge every candidate for ``cfg.task``; returns (and writes) the merged report."""
    from openrlhf.eval import judged
    from openrlhf.eval.client import JudgeClient
    from openrlhf.eval.data import judge_prompts, mtbench_references
    from openrlhf.eval.report import load_report, write_report
    from openrlhf.utils.jsonl import write_jsonl_atomic

    candidates = parse_candidates(cfg.candidate)
    if not candidates:
        raise DataError("--candidate: give at least one NAME=FILE")
    prompts = judge_prompts(cfg.judge.prompt_file)
    need = {"indomain": ["pair-v2"], "alpacaeval": ["pair-v2"],
            "mtbench": ["single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"]}[cfg.task]
    missing = [n for n in need if n not in prompts]
    if missing:
        raise DataError(f"--judge.prompt_file: no judge prompt named {missing}")
    if cfg.task == "indomain":
        items = _indomain_items(cfg, candidates)
    elif cfg.task == "alpacaeval":
        items, reference = _alpaca_items(cfg, candidates)
    else:
        items = _mtbench_items(cfg, candidates)
        references = mtbench_references()

    os.makedirs(cfg.output_dir, exist_ok=True)
    client = JudgeClient(cfg.judge, cfg.judge.cache_path or os.path.join(cfg.output_dir, "judge_cache.jsonl"), log=log)
    client.check()
    report = load_report(cfg.output_dir)
    audit: List[dict] = []
    for name, its in items.items():
        if cfg.task == "mtbench":
            reqs = judged.mtbench_requests(its, prompts, references)
            texts = [j.text for j in client.judge([r for _, _, r in reqs], desc=f"MT-Bench {name}")]
            grades = [(q, t, judged.parse_rating(x)) for (q, t, _), x in zip(reqs, texts)]
            numbers = judged.mtbench_summary(its, grades)
            audit += [{"model": name, "question_id": q, "turn": t, "rating": g, "judgment": x}
                      for (q, t, g), x in zip(grades, texts)]
        else:
            texts = [j.text for j in client.judge(judged.pair_requests(its, prompts["pair-v2"]),
                                                  desc=f"{cfg.task} {name}")]
            outcomes = judged.pairwise_outcomes(its, texts)
            if cfg.task == "indomain":
                numbers = judged.indomain_summary(outcomes)
            else:
                numbers = judged.alpaca_summary(outcomes)
                numbers.update(length_controlled(name, its, outcomes, reference, cfg.judge.model))
            for o, k in zip(outcomes, range(len(outcomes))):
                audit.append({"model": name, **o, "judgment_candidate_first": texts[2 * k],
                              "judgment_candidate_second": texts[2 * k + 1]})
        report.setdefault("models", {}).setdefault(name, {})[cfg.task] = numbers
        log(f"judge: {cfg.task} {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in numbers.items() if not isinstance(v, (list, dict))))
    report.setdefault("judge", {})[cfg.task] = {"base_url": cfg.judge.base_url, "model": cfg.judge.model,
                                                **client.stats.as_dict()}
    write_jsonl_atomic(os.path.join(cfg.output_dir, f"judgments_{cfg.task}.jsonl"), audit)
    write_report(report, cfg.output_dir)
    log(f"judge: {client.stats.requests} requests sent, {client.stats.from_cache} judgments from the cache, "
        f"{client.stats.retries} retries, {client.stats.prompt_tokens} prompt + {client.stats.completion_tokens} "
        f"completion tokens -> {os.path.join(cfg.output_dir, 'report.md')}")
    return report


def length_controlled(name: str, items, outcomes, reference, annotator: str) -> Dict[str, Any]:
    """AlpacaEval's length-controlled win rate through the ``alpaca_eval`` library when it is installed
    and can fetch what its GLM needs; otherwise the reason it was not computed."""
    import importlib.util

    if importlib.util.find_spec("alpaca_eval") is None:
        return {"length_controlled_win_rate": None,
                "length_controlled_note": "not computed: alpaca_eval is not installed (pip install alpaca-eval==0.6.6)"}
    try:
        import pandas as pd
        from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

        rows = [{"instruction": r["instruction"], "output_1": r["output"], "output_2": it.candidate,
                 "generator_1": r.get("generator", "reference"), "generator_2": name, "annotator": annotator,
                 "preference": 1.0 + o["preference"]}
                for it, o, r in zip(items, outcomes, reference) if o.get("preference") is not None]
        metrics = get_length_controlled_winrate(pd.DataFrame(rows), save_weights_dir=None)
        return {"length_controlled_win_rate": float(metrics["length_controlled_winrate"]),
                "length_controlled_standard_error": float(metrics.get("lc_standard_error", float("nan")))}
    except Exception as e:  # the library needs its hub data (df_gamed.csv) and the full 805 instructions
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"length_controlled_win_rate": None,
                "length_controlled_note": f"not computed: alpaca_eval failed ({type(e).__name__}: {first[:200]})"}


def write_prompts(task: str, output: str, max_items: int = -1) -> int:
    """The prompt file ``generate`` answers for MT-Bench (ids = question ids, ``turns``) or AlpacaEval
    (ids = positions, ``prompt`` = instruction); returns the row count."""
    from openrlhf.eval.data import alpaca_reference, mtbench_questions
    from openrlhf.utils.jsonl import write_jsonl_atomic

    if task == "mtbench":
        rows = [{"id": q["question_id"], "category": q["category"], "turns": q["turns"]} for q in mtbench_questions()]
    elif task == "alpacaeval":
        rows = [{"id": k, "prompt": r["instruction"]} for k, r in enumerate(alpaca_reference())]
    else:
        raise DataError(f"--task {task}: prompt files exist for mtbench and alpacaeval (indomain uses the held-out "
                        "prompts of prepare_prompts)")
    if max_items > 0:
        rows = rows[:max_items]
    return write_jsonl_atomic(output, rows)

