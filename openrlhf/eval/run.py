"""``python -m openrlhf.cli.judge``: one judged evaluation of candidate response files.

    --task indomain    each candidate vs the teacher's responses (same ids, same prompts)
    --task mtbench     each candidate's two-turn MT-Bench answers, graded 1-10
    --task alpacaeval  each candidate vs the reference outputs (default: AlpacaEval's GPT-4 baseline),
                       judged by AlpacaEval 2's annotator (weighted_alpaca_eval_gpt4_turbo, alpaca_eval 0.6.6)
    --task ifeval      each candidate's answers to IFEval's 541 prompts, scored by Google's checker program
                       (no judge endpoint; see :mod:`openrlhf.eval.ifeval`)

Response files are ``generate`` outputs (``id``, the prompt, ``response``; for MT-Bench ``turns`` and
``responses``). Every file is read and checked, and the endpoint answers one test request, before
any judgment is requested. Results are merged into ``<output_dir>/report.json`` (model -> task ->
numbers; run the command once per task into the same folder), with ``report.md`` (the paper's
Table 1 layout), ``report.png`` and ``judgments_<task>.jsonl`` (every verdict, for auditing). Each
model's numbers also count its answers that stopped at the generation token limit
(``hit_token_limit``, from the response files' ``finish_reason``), and each task records what makes
its numbers (not) comparable with the published leaderboards (``comparability``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import packaging.version

from openrlhf.config.schema import JudgeTaskConfig
from openrlhf.config.validate import parse_named_files
from openrlhf.datasets.loading import load_rows
from openrlhf.eval import ifeval, judged
from openrlhf.eval.client import JudgeClient
from openrlhf.eval.data import (
    alpaca_annotator,
    alpaca_reference,
    ifeval_rows,
    judge_prompts,
    mtbench_questions,
    mtbench_references,
)
from openrlhf.eval.judged import MTBenchAnswer, PairItem
from openrlhf.eval.report import load_report, write_report
from openrlhf.generation.outputs import check_same_ids, read_responses
from openrlhf.utils.errors import DataError, UserError
from openrlhf.utils.jsonl import write_jsonl_atomic
from openrlhf.utils.run_folder import take_lock


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


def token_limit_hits(rows: Dict[str, dict], ids) -> Dict[str, Any]:
    """How many of the judged answers stopped at the generation token limit (``finish_reason``
    ``length``; every turn of a multi-turn row counts), of how many, and which ids."""
    hits, answers, where = 0, 0, []
    for i in ids:
        row = rows[str(i)]
        reasons = row.get("finish_reasons") or [row.get("finish_reason")]
        answers += len(reasons)
        n = sum(r == "length" for r in reasons)
        hits += n
        if n:
            where.append(str(i))
    return {"hit_token_limit": hits, "answers": answers, "hit_token_limit_ids": where}


# ---- building the items (all checks before any request) -------------------------------------------------


def _indomain_items(cfg: JudgeTaskConfig, candidates: Dict[str, str]):
    if not cfg.teacher_responses:
        raise DataError(
            "--teacher_responses: required for --task indomain (the teacher's responses to the same prompts)"
        )
    teacher = read_responses(cfg.teacher_responses, "--teacher_responses")
    if cfg.prompts:
        known = {str(r.get("id", i)) for i, r in enumerate(load_rows(cfg.prompts, what="--prompts"))}
        unknown = [i for i in teacher if i not in known]
        if unknown:
            raise DataError(
                f"--teacher_responses {cfg.teacher_responses}: {len(unknown)} ids are not held-out prompts "
                f"of --prompts {cfg.prompts} (e.g. {unknown[:3]})"
            )
    ids = list(teacher)[: cfg.max_items] if cfg.max_items > 0 else list(teacher)
    out, limits = {}, {}
    for name, path in candidates.items():
        rows = read_responses(path, f"--candidate {name}")
        check_same_ids(teacher, rows, name, path)
        out[name] = [
            PairItem(i, _question_text(teacher[i]["prompt"]), str(rows[i]["response"]), str(teacher[i]["response"]))
            for i in ids
        ]
        limits[name] = token_limit_hits(rows, ids)
    return out, limits


def alpaca_subset(n_total: int, max_items: int) -> List[int]:
    """The instructions (positions) that ``--max_items`` keeps: all of them, or the first ``max_items`` after
    the shuffle alpaca_eval's ``max_instances`` makes (pandas ``sample(frac=1, random_state=123)``, i.e. numpy's
    ``RandomState(123).permutation``), so that a subset is as representative as upstream's."""
    if max_items <= 0 or max_items >= n_total:
        return list(range(n_total))
    return [int(k) for k in np.random.RandomState(123).permutation(n_total)[:max_items]]


def alpaca_not_comparable(cfg: JudgeTaskConfig, annotator, n_total: int) -> List[str]:
    """Why these AlpacaEval numbers do not sit beside the leaderboard's (empty: they do): another judge than the
    annotator's model, other reference outputs, a subset of the instructions."""
    reasons = []
    if cfg.judge.model != annotator.model:
        reasons.append(f"the leaderboard's judge is {annotator.model}, the judge here is {cfg.judge.model}")
    if cfg.reference_outputs:
        reasons.append(f"the reference outputs are {cfg.reference_outputs}, not the leaderboard's")
    if 0 < cfg.max_items < n_total:
        reasons.append(f"a subset: {cfg.max_items} of the {n_total} instructions (alpaca_eval's max_instances draw)")
    return reasons


def _alpaca_items(cfg: JudgeTaskConfig, candidates: Dict[str, str]):
    ref = alpaca_reference(cfg.reference_outputs or None)
    kept = alpaca_subset(len(ref), cfg.max_items)
    out, limits = {}, {}
    for name, path in candidates.items():
        rows = _read(path, f"--candidate {name}", ("id", "prompt", "response"))
        items = []
        for k in kept:
            row = rows.get(str(k))
            if row is None:
                raise DataError(
                    f"--candidate {name}={path}: no response for AlpacaEval instruction {k} (id {k}); "
                    "generate answers from the prompt file of `python -m openrlhf.cli.eval_prompts "
                    "--task alpacaeval`"
                )
            if row["prompt"] != ref[k]["instruction"]:
                raise DataError(
                    f"--candidate {name}={path}: row {row['_row']} (id {k}) answers another instruction "
                    "than AlpacaEval's"
                )
            items.append(PairItem(str(k), ref[k]["instruction"], str(row["response"]), str(ref[k]["output"])))
        out[name] = items
        limits[name] = token_limit_hits(rows, kept)
    return out, limits, [ref[k] for k in kept], len(ref)


def _mtbench_items(cfg: JudgeTaskConfig, candidates: Dict[str, str]):
    questions = mtbench_questions()
    if cfg.max_items > 0:
        questions = questions[: cfg.max_items]
    out, limits = {}, {}
    for name, path in candidates.items():
        rows = _read(path, f"--candidate {name}", ("id", "turns", "responses"))
        answers = []
        for q in questions:
            row = rows.get(str(q["question_id"]))
            if row is None:
                raise DataError(
                    f"--candidate {name}={path}: no answers to MT-Bench question {q['question_id']}; "
                    "generate them from the prompt file of `python -m openrlhf.cli.eval_prompts --task "
                    "mtbench`"
                )
            if list(row["turns"]) != list(q["turns"]) or len(row["responses"]) != len(q["turns"]):
                raise DataError(
                    f"--candidate {name}={path}: row {row['_row']} (question {q['question_id']}) does "
                    "not hold the two answers to MT-Bench's two turns of that question"
                )
            answers.append(
                MTBenchAnswer(
                    int(q["question_id"]), q["category"], list(q["turns"]), [str(x) for x in row["responses"]]
                )
            )
        out[name] = answers
        limits[name] = token_limit_hits(rows, [q["question_id"] for q in questions])
    return out, limits


def _ifeval_responses(candidates: Dict[str, str], prompts: List[dict]) -> Tuple[dict, dict]:
    """Each candidate's response to every IFEval prompt of ``prompts`` (Google's rows; the response row's id is
    the prompt's key), and its answers cut at the token limit; a missing answer or one to another prompt is a
    DataError."""
    out, limits = {}, {}
    for name, path in candidates.items():
        rows = _read(path, f"--candidate {name}", ("id", "prompt", "response"))
        responses = []
        for p in prompts:
            row = rows.get(str(p["key"]))
            if row is None:
                raise DataError(
                    f"--candidate {name}={path}: no response to IFEval prompt {p['key']} (id {p['key']}); generate "
                    "answers from the prompt file of `python -m openrlhf.cli.eval_prompts --task ifeval`"
                )
            if row["prompt"] != p["prompt"]:
                raise DataError(
                    f"--candidate {name}={path}: row {row['_row']} (id {p['key']}) answers another prompt than "
                    "IFEval's prompt of that key"
                )
            if not isinstance(row["response"], str):
                raise DataError(f"--candidate {name}={path}: row {row['_row']} (id {p['key']}): response is not text")
            responses.append(row["response"])
        out[name] = responses
        limits[name] = token_limit_hits(rows, [p["key"] for p in prompts])
    return out, limits


def judge_ifeval(cfg: JudgeTaskConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """IFEval: every candidate's answers scored by Google's checker (no judge endpoint); the four official
    metrics with their bootstrap intervals, the accuracy per instruction type, the answers cut at the token
    limit, and every pair of candidates compared prompt by prompt; merged into ``report.json``."""
    candidates = parse_candidates(cfg.candidate)
    if not candidates:
        raise DataError("--candidate: give at least one NAME=FILE")
    prompts = ifeval_rows()
    if cfg.max_items > 0:
        prompts = prompts[: cfg.max_items]
    responses, limits = _ifeval_responses(candidates, prompts)  # every file checked before any scoring
    evaluation, punkt = ifeval.checker()
    inputs = ifeval.read_inputs(evaluation, len(prompts))

    os.makedirs(cfg.output_dir, exist_ok=True)
    report = load_report(cfg.output_dir)
    results, undetected, audit = {}, {}, []
    for name in candidates:
        results[name], undetected[name] = ifeval.score(evaluation, inputs, responses[name])
        numbers = ifeval.summary(results[name])
        numbers["langdetect_no_language"] = undetected[name]
        numbers.update(limits[name])
        report.setdefault("models", {}).setdefault(name, {})["ifeval"] = numbers
        audit += [{"model": name, **ifeval.record(r)} for r in results[name]]
        log(
            f"judge: ifeval {name}: "
            + ", ".join(f"{m} {numbers[m]:.4f}" for m in ifeval.METRICS)
            + f", {numbers['hit_token_limit']} of {numbers['answers']} answers at the token limit"
        )
    report.setdefault("paired", {})["ifeval"] = ifeval.pairs(results)
    report.setdefault("judge", {})["ifeval"] = {
        "scorer": f"Google's IFEval checker ({ifeval.checker_version()}): evaluation.test_instruction_following_"
        "strict / _loose on every prompt",
        "punkt": punkt,
        "prompts": len(inputs),
        "notes": ifeval.notes(inputs, punkt, undetected),
        "comparability": comparability("ifeval", ""),
    }
    write_jsonl_atomic(os.path.join(cfg.output_dir, "judgments_ifeval.jsonl"), audit)
    write_report(report, cfg.output_dir)
    log(
        f"judge: ifeval scored {len(candidates)} models on {len(inputs)} prompts -> {os.path.join(cfg.output_dir, 'report.md')}"
    )
    return report


# ---- the whole job ---------------------------------------------------------------------------------------


def judge(cfg: JudgeTaskConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Judge every candidate for ``cfg.task``; returns (and writes) the merged report. --output_dir merges
    the reports of several tasks by design, so a judge holds only its lock (a second judge into it is refused)."""
    lock = take_lock(cfg.output_dir, what="--output_dir", log=log)
    try:
        return _judge(cfg, log)
    finally:
        lock.release()


def _judge(cfg: JudgeTaskConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    if cfg.task == "ifeval":
        return judge_ifeval(cfg, log)
    candidates = parse_candidates(cfg.candidate)
    if not candidates:
        raise DataError("--candidate: give at least one NAME=FILE")
    annotator, n_alpaca = None, 0
    if cfg.task == "alpacaeval":
        annotator = alpaca_annotator()
        prompts = {}
    else:
        prompts = judge_prompts(cfg.judge.prompt_file)
        need = {
            "indomain": ["pair-v2"],
            "mtbench": ["single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"],
        }[cfg.task]
        missing = [n for n in need if n not in prompts]
        if missing:
            raise DataError(f"--judge.prompt_file: no judge prompt named {missing}")
    if cfg.task == "indomain":
        items, limits = _indomain_items(cfg, candidates)
    elif cfg.task == "alpacaeval":
        items, limits, reference, n_alpaca = _alpaca_items(cfg, candidates)
    else:
        items, limits = _mtbench_items(cfg, candidates)
        references = mtbench_references()

    os.makedirs(cfg.output_dir, exist_ok=True)
    client = JudgeClient(cfg.judge, cfg.judge.cache_path or os.path.join(cfg.output_dir, "judge_cache.jsonl"), log=log)
    client.check(top_logprobs=annotator.top_logprobs if annotator is not None else 0)
    report = load_report(cfg.output_dir)
    audit: List[dict] = []
    per_item: Dict[str, Dict[Any, Optional[float]]] = {}  # each model's per-item values, for the paired comparisons
    item_weights: Dict[str, Dict[Any, int]] = {}
    for name, its in items.items():
        if cfg.task == "mtbench":
            reqs = judged.mtbench_requests(its, prompts, references)
            texts = [j.text for j in client.judge([r for _, _, r in reqs], desc=f"MT-Bench {name}")]
            grades = [(q, t, judged.parse_rating(x)) for (q, t, _), x in zip(reqs, texts, strict=True)]
            numbers = judged.mtbench_summary(its, grades)
            per_item[name], item_weights[name] = judged.mtbench_item_values(grades)
            audit += [
                {"model": name, "question_id": q, "turn": t, "rating": g, "judgment": x}
                for (q, t, g), x in zip(grades, texts, strict=True)
            ]
        elif cfg.task == "alpacaeval":
            reqs = judged.alpaca_requests(its, annotator)
            sent = iter(client.judge([r for r in reqs if r is not None], desc=f"alpacaeval {name}"))
            judgments = [next(sent) if r is not None else None for r in reqs]
            if any(j is not None and not j.top_logprobs for j in judgments):
                raise UserError(
                    f"--judge.base_url {cfg.judge.base_url}: the endpoint answered without "
                    f"log-probabilities (asked: logprobs, top_logprobs {annotator.top_logprobs}); "
                    f"AlpacaEval 2's annotator reads its verdict from them (vLLM's server gives them)"
                )
            rows = judged.alpaca_preferences(its, annotator, judgments)
            prefs = [r["preference"] for r in rows]
            numbers = judged.alpaca_summary(prefs, [it.id for it in its])
            per_item[name] = judged.alpaca_item_values(prefs, [it.id for it in its])
            numbers["annotator"] = annotator.name
            # as the leaderboard shows it beside the win rate: the answers' mean length in characters
            numbers["avg_length"] = sum(len(it.candidate) for it in its) / len(its) if its else float("nan")
            not_comparable = alpaca_not_comparable(cfg, annotator, n_alpaca)
            if not_comparable:  # the GLM's instruction difficulties are the leaderboard's 805, by position
                numbers.update(
                    length_controlled_win_rate=None,
                    length_controlled_note="not computed: its GLM (instruction difficulties, gamed baselines) was "
                    f"fitted on the leaderboard's setting ({'; '.join(not_comparable)})",
                )
            else:
                numbers.update(length_controlled(name, its, prefs, reference, cfg.judge.model, annotator))
            if len(its) < n_alpaca:
                numbers["subset"] = (
                    f"{len(its)} of {n_alpaca} instructions (alpaca_eval's max_instances draw, seed 123)"
                )
            audit += [
                {"model": name, **r, "judgment": j.text if j is not None else None}
                for r, j in zip(rows, judgments, strict=True)
            ]
        else:
            texts = [
                j.text for j in client.judge(judged.pair_requests(its, prompts["pair-v2"]), desc=f"{cfg.task} {name}")
            ]
            outcomes = judged.pairwise_outcomes(its, texts)
            numbers = judged.indomain_summary(outcomes)
            per_item[name] = judged.indomain_item_values(outcomes)
            for o, k in zip(outcomes, range(len(outcomes)), strict=True):
                audit.append(
                    {
                        "model": name,
                        **o,
                        "judgment_candidate_first": texts[2 * k],
                        "judgment_candidate_second": texts[2 * k + 1],
                    }
                )
        numbers.update(limits[name])
        report.setdefault("models", {}).setdefault(name, {})[cfg.task] = numbers
        log(
            f"judge: {cfg.task} {name}: "
            + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in numbers.items()
                if not isinstance(v, (list, dict))
            )
        )
    report.setdefault("paired", {})[cfg.task] = judged.paired_items(per_item, item_weights or None)
    report.setdefault("judge", {})[cfg.task] = {
        "base_url": cfg.judge.base_url,
        "model": cfg.judge.model,
        "max_tokens": cfg.judge.max_tokens,
        **client.stats.as_dict(),
        "comparability": comparability(
            cfg.task, cfg.judge.model, annotator, alpaca_not_comparable(cfg, annotator, n_alpaca) if annotator else ()
        ),
    }
    write_jsonl_atomic(os.path.join(cfg.output_dir, f"judgments_{cfg.task}.jsonl"), audit)
    write_report(report, cfg.output_dir)
    log(
        f"judge: {client.stats.requests} requests sent, {client.stats.from_cache} judgments from the cache, "
        f"{client.stats.retries} retries, {client.stats.prompt_tokens} prompt + {client.stats.completion_tokens} "
        f"completion tokens, {client.stats.cut_by_max_tokens} replies stopped at the token limit (--judge.max_tokens "
        f"{cfg.judge.max_tokens} or the judge's context) -> {os.path.join(cfg.output_dir, 'report.md')}"
    )
    return report


def comparability(task: str, judge_model: str, annotator=None, not_comparable: Sequence[str] = ()) -> str:
    """One line: what makes this task's numbers (not) comparable with the published ones."""
    if task == "ifeval":
        return (
            "IFEval as Google's evaluation scores it (its prompts and checker code, the four official metrics); "
            "comparable with published numbers made with the same generation settings (greedy, "
            f"{ifeval.IFEVAL_MAX_NEW_TOKENS} new tokens as lm-evaluation-harness and lighteval, the model's chat "
            "template), which the prompt file of eval_prompts carries"
        )
    if task == "mtbench":
        same = judge_model in ("gpt-4", "gpt-4-0613")
        return (
            f"MT-Bench as FastChat's llm_judge grades it (single-v1 prompts, GPT-4 references for math / "
            f"reasoning / coding, FastChat's verdict parsing) with judge {judge_model}: "
            + (
                "the leaderboard's judge model, comparable"
                if same
                else "the leaderboard's scores come from GPT-4 as the judge, so these are not comparable with them"
            )
        )
    if task == "alpacaeval":
        return (
            f"AlpacaEval 2's annotator {annotator.name} (alpaca_eval 0.6.6: its prompt, order coin and "
            f"log-probability preference) with judge {judge_model}: "
            + (
                "the leaderboard's judge model, reference outputs and all its instructions, comparable"
                if not not_comparable
                else f"not comparable with the leaderboard ({'; '.join(not_comparable)}), and no length-controlled "
                "win rate is computed"
            )
        )
    return (
        "in-domain: our own evaluation (the paper's omega vs the teacher, MT-Bench's pair-v2 prompt in both "
        f"orders); no published leaderboard; judge {judge_model}"
    )


def length_controlled(name: str, items, prefs, reference, judge_model: str, annotator) -> Dict[str, Any]:
    """AlpacaEval's length-controlled win rate through the ``alpaca_eval`` library: every instruction's row,
    in the order of AlpacaEval's instructions (an unparsed one with a NaN preference, as alpaca_eval keeps
    it), and only for the judge the library's GLM was fitted with; otherwise the reason it was not computed."""
    if judge_model != annotator.model:
        return {
            "length_controlled_win_rate": None,
            "length_controlled_note": f"not computed: its GLM (instruction difficulties, gamed baselines) was "
            f"fitted on {annotator.model}'s annotations, the judge here is {judge_model}",
        }
    if importlib.util.find_spec("alpaca_eval") is None:
        return {
            "length_controlled_win_rate": None,
            "length_controlled_note": "not computed: alpaca_eval is not installed (pip install -e '.[alpacaeval]' in this fork's folder)",
        }
    try:
        import pandas as pd

        get_length_controlled_winrate = import_alpaca_eval(
            "alpaca_eval.metrics.glm_winrate"
        ).get_length_controlled_winrate

        frame = pd.DataFrame(lc_rows(name, items, prefs, reference, annotator.name))
        metrics = get_length_controlled_winrate(frame, save_weights_dir=None)
        return {
            "length_controlled_win_rate": float(metrics["length_controlled_winrate"]),
            "length_controlled_standard_error": float(metrics.get("lc_standard_error", float("nan"))),
        }
    except Exception as e:  # the library needs its hub data (df_gamed.csv), the full 805 instructions, and
        # (0.6.6) setuptools' pkg_resources, gone from setuptools >= 81
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {
            "length_controlled_win_rate": None,
            "length_controlled_note": f"not computed: alpaca_eval failed ({type(e).__name__}: {first[:200]})",
        }


def import_alpaca_eval(module: str):
    """alpaca_eval's ``module``. alpaca_eval 0.6.6 imports ``pkg_resources``, which setuptools >= 81 no longer
    ships (nor does a fresh Python 3.12 venv): where it is missing, a stand-in with the two functions alpaca_eval
    calls (``parse_version``, ``get_distribution(...).version``, from ``packaging`` and ``importlib.metadata``)
    is in ``sys.modules`` only while alpaca_eval imports, so no other package sees it."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return importlib.import_module(module)
    shim = types.ModuleType("pkg_resources")
    shim.parse_version = packaging.version.parse
    shim.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
    sys.modules["pkg_resources"] = shim
    try:
        return importlib.import_module(module)
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


def lc_rows(name: str, items, prefs, reference, annotator_name: str) -> List[dict]:
    """alpaca_eval's annotation rows: one per instruction, in order (the GLM looks instruction
    difficulty up by position), unparsed ones with a NaN preference."""
    return [
        {
            "instruction": r["instruction"],
            "output_1": r["output"],
            "output_2": it.candidate,
            "generator_1": r.get("generator", "reference"),
            "generator_2": name,
            "annotator": annotator_name,
            "preference": float("nan") if p is None else float(p),
        }
        for it, p, r in zip(items, prefs, reference, strict=True)
    ]


# FastChat's llm_judge (gen_model_answer.py): sampling temperature by MT-Bench category, 0.7 for any
# other question (an AlpacaEval instruction has no category), and 1024 new tokens.
FASTCHAT_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
FASTCHAT_OTHER_TEMPERATURE = 0.7
FASTCHAT_MAX_NEW_TOKENS = 1024


# AlpacaEval answers: the leaderboard's models mostly answer with 2048 to 4096 new tokens (alpaca_eval's model
# configs); 2048 is the common one (a cut answer is counted in the report: hit_token_limit).
ALPACA_MAX_NEW_TOKENS = 2048

# New tokens per answer of each benchmark's prompt file (eval_prompts' default): FastChat's 1024 for MT-Bench,
# the leaderboard's common 2048 for AlpacaEval; 1280 for IFEval (lm-evaluation-harness and lighteval), room for
# its "at least 800 / 900 / 1200 words" prompts (about 1.3 tokens a word).
BENCH_MAX_NEW_TOKENS = {
    "mtbench": FASTCHAT_MAX_NEW_TOKENS,
    "alpacaeval": ALPACA_MAX_NEW_TOKENS,
    "ifeval": ifeval.IFEVAL_MAX_NEW_TOKENS,
}


def write_prompts(
    task: str,
    output: str,
    max_items: int = -1,
    temperature: Optional[float] = None,
    max_new_tokens: Optional[int] = None,
) -> int:
    """The prompt file ``generate`` answers for MT-Bench (ids = question ids, ``category``, ``turns``),
    AlpacaEval (ids = positions, ``prompt`` = instruction) or IFEval (ids = Google's keys, ``prompt``), each row
    with the ``temperature`` and ``max_new_tokens`` to answer it with: FastChat's temperatures for MT-Bench and
    AlpacaEval (by category), 1024 new tokens for MT-Bench (FastChat's) and 2048 for AlpacaEval, greedy with 1280 new tokens for IFEval (its harnesses'
    setting); ``temperature`` / ``max_new_tokens`` given: that one for every row. Returns the row count."""
    if temperature is not None and temperature < 0:
        raise DataError(f"--temperature: must be >= 0, got {temperature}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise DataError(f"--max_new_tokens: must be >= 1, got {max_new_tokens}")
    new_tokens = max_new_tokens if max_new_tokens is not None else BENCH_MAX_NEW_TOKENS.get(task, 0)

    def settings(category: str) -> dict:
        t = temperature if temperature is not None else FASTCHAT_TEMPERATURE.get(category, FASTCHAT_OTHER_TEMPERATURE)
        return {"temperature": t, "max_new_tokens": new_tokens}

    if task == "mtbench":
        rows = [
            {"id": q["question_id"], "category": q["category"], "turns": q["turns"], **settings(q["category"])}
            for q in mtbench_questions()
        ]
    elif task == "alpacaeval":  # a subset as judge draws it (alpaca_subset)
        ref = alpaca_reference()
        rows = [{"id": k, "prompt": ref[k]["instruction"], **settings("")} for k in alpaca_subset(len(ref), max_items)]
    elif task == "ifeval":
        t = 0.0 if temperature is None else temperature  # greedy, as lm-evaluation-harness and lighteval
        rows = [
            {"id": r["key"], "prompt": r["prompt"], "temperature": t, "max_new_tokens": new_tokens}
            for r in ifeval_rows()
        ]
    else:
        raise DataError(
            f"--task {task}: prompt files exist for mtbench, alpacaeval and ifeval (indomain uses the held-out "
            "prompts of prepare_prompts)"
        )
    if max_items > 0:
        rows = rows[:max_items]
    return write_jsonl_atomic(output, rows)
