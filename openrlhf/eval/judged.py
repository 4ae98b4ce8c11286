"""The judged evaluations: pairwise with position swap (in-domain vs the teacher, AlpacaEval vs a
reference model) and MT-Bench single-answer grading. Pure arithmetic over judgments, so the
numbers are testable without a judge.

Pairwise (MT-Bench's convention): every pair is judged twice, the candidate shown first (A) and
then second (B). A *win* needs both orders to prefer the candidate, a *loss* both to prefer the
other answer; anything else is a *tie*. A judgment without a verdict (no ``[[A]]`` / ``[[B]]`` /
``[[C]]``) makes its pair *unparsed*: kept, counted and listed, never a tie. In-domain
omega = (wins - losses) / (wins + losses + ties) x 100 (paper Sec. 5). The position-bias rate is how
often a decisive verdict picked the answer shown first.

AlpacaEval: per instruction, the candidate's preference is the mean over the two orders of
1 (preferred), 0.5 (tie), 0 (not) (an instruction with an unparsed order is unparsed); the win
rate is their mean x 100 and its standard error the standard deviation over instructions /
sqrt(n) x 100.

MT-Bench: each answer is graded 1-10 (``[[rating]]``), against GPT-4's reference answer for the
math, reasoning and coding questions; ``score`` is the mean over every parsed grade, ``turn1`` /
``turn2`` and ``per_category`` the means of those.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from openrlhf.eval.client import JudgeRequest

_PAIR = re.compile(r"\[\[(A|B|C)\]\]")
_RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


def parse_pair(text: str) -> Optional[str]:
    """'A', 'B', 'tie' ([[C]]), or None when the judgment has no verdict or contradicts itself."""
    found = set(_PAIR.findall(text or ""))
    if len(found) != 1:
        return None
    v = found.pop()
    return "tie" if v == "C" else v


def parse_rating(text: str) -> Optional[float]:
    """The first ``[[x]]`` grade in 1..10, or None."""
    m = _RATING.search(text or "")
    if not m:
        return None
    value = float(m.group(1))
    return value if 1.0 <= value <= 10.0 else None


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
            out.append(JudgeRequest(prompt.system, prompt.template.format(question=it.question, answer_a=a,
                                                                           answer_b=b)))
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
        out.append({"id": it.id, "verdict_candidate_first": first, "verdict_candidate_second": second,
                    "outcome": outcome})
    return out


def indomain_summary(outcomes: Sequence[dict]) -> dict:
    """win / tie / lose counts, omega (percent), unparsed count and ids, position-bias rate."""
    w = sum(o["outcome"] == "win" for o in outcomes)
    lose = sum(o["outcome"] == "loss" for o in outcomes)
    t = sum(o["outcome"] == "tie" for o in outcomes)
    decided = [v for o in outcomes for v in (o["verdict_candidate_first"], o["verdict_candidate_second"])
               if v in ("A", "B")]
    n = w + lose + t
    return {"win": w, "tie": t, "lose": lose, "omega": 100.0 * (w - lose) / n if n else float("nan"),
            "unparsed": sum(o["outcome"] == "unparsed" for o in outcomes),
            "unparsed_ids": [o["id"] for o in outcomes if o["outcome"] == "unparsed"],
            "position_bias": sum(v == "A" for v in decided) / len(decided) if decided else float("nan"),
            "judged": len(outcomes)}


def alpaca_summary(outcomes: Sequence[dict]) -> dict:
    """Win rate (ties 1/2) and its standard error over instructions, both in percent."""
    prefs = []
    for o in outcomes:
        views = [_candidate_view(o["verdict_candidate_first"], True), _candidate_view(o["verdict_candidate_second"], False)]
        if None in views:  # an order without a verdict: the instruction is unparsed (listed, not counted)
            o["preference"] = None
            continue
        o["preference"] = sum({"win": 1.0, "tie": 0.5, "loss": 0.0}[v] for v in views) / 2
        prefs.append(o["preference"])
    n = len(prefs)
    mean = sum(prefs) / n if n else float("nan")
    sd = math.sqrt(sum((p - mean) ** 2 for p in prefs) / (n - 1)) if n > 1 else float("nan")
    return {"win_rate": 100.0 * mean, "standard_error": 100.0 * sd / math.sqrt(n) if n > 1 else float("nan"),
            "n": n, "unparsed": len(outcomes) - n,
            "unparsed_ids": [o["id"] for o in outcomes if o.get("preference") is None]}


# ---- MT-Bench ----------------------------------------------------------------------------------------------


@dataclass
class MTBenchAnswer:
    id: int
    category: str
    turns: List[str]  # the two questions
    answers: List[str]  # the model's two answers


def mtbench_requests(answers: Sequence[MTBenchAnswer], prompts: Dict[str, object],
                     references: Dict[int, List[str]]) -> List[Tuple[int, int, JudgeRequest]]:
    """(question id, turn 1 or 2, request) for every answer to grade."""
    from openrlhf.eval.data import NEED_REFERENCE

    out = []
    for a in answers:
        ref = references.get(a.id) if a.category in NEED_REFERENCE else None
        q1, q2 = a.turns[0], a.turns[1]
        if ref is not None:
            p1, p2 = prompts["single-math-v1"], prompts["single-math-v1-multi-turn"]
            u1 = p1.template.format(question=q1, ref_answer_1=ref[0], answer=a.answers[0])
            u2 = p2.template.format(question_1=q1, question_2=q2, ref_answer_1=ref[0], ref_answer_2=ref[1],
                                    answer_1=a.answers[0], answer_2=a.answers[1])
        else:
            p1, p2 = prompts["single-v1"], prompts["single-v1-multi-turn"]
            u1 = p1.template.format(question=q1, answer=a.answers[0])
            u2 = p2.template.format(question_1=q1, question_2=q2, answer_1=a.answers[0], answer_2=a.answers[1])
        out.append((a.id, 1, JudgeRequest(p1.system, u1)))
        out.append((a.id, 2, JudgeRequest(p2.system, u2)))
    return out


def mtbench_summary(answers: Sequence[MTBenchAnswer], grades: Sequence[Tuple[int, int, Optional[float]]]) -> dict:
    """score, turn1, turn2, per_category (means over parsed grades), unparsed count and ids."""
    category = {a.id: a.category for a in answers}
    parsed = [(q, t, g) for q, t, g in grades if g is not None]

    def mean(xs: List[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    cats = sorted({category[q] for q, _, _ in grades})
    return {"score": mean([g for _, _, g in parsed]),
            "turn1": mean([g for _, t, g in parsed if t == 1]),
            "turn2": mean([g for _, t, g in parsed if t == 2]),
            "per_category": {c: mean([g for q, _, g in parsed if category[q] == c]) for c in cats},
            "unparsed": len(grades) - len(parsed),
            "unparsed_ids": [f"{q}-turn{t}" for q, t, g in grades if g is None],
            "graded": len(grades)}
