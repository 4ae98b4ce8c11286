"""Offline evaluation of distilled students against the teacher, without a judge.

Inputs are response files as written by ``python -m openrlhf.cli.generate`` (JSONL
rows with ``id``, ``prompt``, ``response``; ``finish_reason`` etc. are optional):
one for the teacher and one per candidate model (base student, dSFT, daDPO, ...).
For every candidate:

- ROUGE-L F1 of its response against the teacher's response to the same prompt
  (longest common subsequence of lowercase word tokens; our own implementation);
- the teacher's NLL of its response: the teacher scores prompt + response with its
  own tokenizer and chat template (as daDPO's teacher term does); the mean NLL over
  response tokens per row, averaged over rows (``teacher_nll``), and over all
  response tokens together (``teacher_nll_tokens``). The tokens that close the turn
  (end-of-turn / EOS) are scored, except for responses cut off by the generator's
  token limit (``finish_reason == "length"``), which did not end there;
- mean response length (words, and teacher tokens) and the share cut off by the
  token limit (``finish_reason == "length"``) when the rows say so.

The teacher's own responses are scored too (row ``teacher``, the reference).
Writes ``report.json``, ``report.md`` (a markdown table), ``report.png`` (bar charts)
and ``scores.jsonl`` (per row and model) into the output folder.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from openrlhf.datasets.common import pad_batch
from openrlhf.datasets.loading import DataError, load_rows
from openrlhf.datasets.templates import PromptRenderer
from openrlhf.datasets.tokenizer import load_tokenizer, pad_token_id
from openrlhf.eval.plots import Panel, bars, write_chart
from openrlhf.eval.report import fmt_num, fmt_p, markdown_table, write_markdown
from openrlhf.generation.outputs import check_same_ids, read_responses
from openrlhf.logps.served import ServedModel
from openrlhf.models.actor import masked_token_logps, sequence_sums
from openrlhf.utils.devices import pick_device
from openrlhf.utils.dtypes import torch_dtype
from openrlhf.utils.served import Endpoint
from openrlhf.utils.stats import bootstrap_ci, paired_comparison

TEACHER_LABEL = "teacher"
_WORD = re.compile(r"\w+", re.UNICODE)


# --------------------------------------------------------------------------- ROUGE-L


def words(text: str) -> List[str]:
    """Lowercase word tokens (runs of letters, digits and underscores)."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel: row i of the classic dynamic programme is kept as the bits of one
    integer (bit j set where the row does not step up at column j), so each token of
    ``b`` costs a few big-integer operations over ``len(a)`` bits.
    """
    if len(a) < len(b):
        a, b = b, a
    n = len(a)
    if n == 0 or not b:
        return 0
    match: Dict[Any, int] = {}
    for j, tok in enumerate(a):
        match[tok] = match.get(tok, 0) | (1 << j)
    full = (1 << n) - 1
    v = full
    for tok in b:
        u = v & match.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return n - bin(v).count("1")


def rouge_l(candidate: str, reference: str) -> Dict[str, float]:
    """ROUGE-L of ``candidate`` against ``reference``: precision, recall, F1 (beta 1), lcs.

    Two empty texts are identical (all 1.0); one empty text scores 0.
    """
    c, r = words(candidate), words(reference)
    if not c and not r:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "lcs": 0}
    lcs = lcs_length(c, r)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "lcs": 0}
    p, rec = lcs / len(c), lcs / len(r)
    return {"precision": p, "recall": rec, "f1": 2 * p * rec / (p + rec), "lcs": lcs}


# --------------------------------------------------------------------------- response files


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------- teacher NLL


def teacher_nll(
    model,
    renderer,
    pairs: Sequence[Tuple[Any, Any]],
    *,
    pad_id: int,
    batch_size: int = 8,
    wheres: Optional[Sequence[str]] = None,
    cut_off: Optional[Sequence[bool]] = None,
    progress: bool = True,
    desc: str = "teacher NLL",
) -> List[Tuple[float, int]]:
    """(sum of NLL over response tokens, number of response tokens) per (prompt, response) pair; ``model``: a
    model here, or a :class:`~openrlhf.logps.served.ServedModel` (the teacher answers from its server).

    For pairs marked in ``cut_off`` (the generator hit its token limit) the tokens
    that close the turn are not scored: the response did not end there.
    """
    wheres = list(wheres) if wheres is not None else [""] * len(pairs)
    tokenized = renderer.tokenize_many(list(pairs), wheres, unfinished=cut_off)
    if isinstance(model, ServedModel):  # the server's log-probs, summed in float64 as below
        sums = model.score({i: (p, r) for i, (p, r) in enumerate(tokenized)}, desc)
        return [(-sums[i][0], len(tokenized[i][1])) for i in range(len(tokenized))]
    device = next(model.parameters()).device
    order = sorted(range(len(tokenized)), key=lambda i: -(len(tokenized[i][0]) + len(tokenized[i][1])))
    out: List[Tuple[float, int]] = [(0.0, 0)] * len(tokenized)
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[start : start + batch_size]
            seqs = [list(tokenized[i][0]) + list(tokenized[i][1]) for i in idx]
            masks = [[False] * len(tokenized[i][0]) + [True] * len(tokenized[i][1]) for i in idx]
            ids, attn, resp = pad_batch(seqs, pad_id, masks)
            ids, attn, resp = ids.to(device), attn.to(device), resp.to(device)
            logps, mask = masked_token_logps(model, ids, attn, resp)
            sums = -sequence_sums(logps)  # the training paths' float64 accumulation
            counts = mask.sum(-1)
            for k, i in enumerate(idx):
                out[i] = (float(sums[k]), int(counts[k]))
    return out


# --------------------------------------------------------------------------- reports


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _with_ci(m: dict, key: str, digits: int = 4, scale: float = 1.0) -> str:
    ci = m.get("ci", {}).get(key)
    if not ci or ci.get("n", 0) == 0:
        return fmt_num(m.get(key) * scale if m.get(key) is not None else None, f"{{:.{digits}f}}")
    return f"{ci['mean'] * scale:.{digits}f} [{ci['lo'] * scale:.{digits}f}, {ci['hi'] * scale:.{digits}f}]"


def offline_markdown(report: dict) -> List[str]:
    """The lines of the offline ``report.md``: one row per model, then ``compare_to`` against each other model."""
    rows = []
    for label, m in report["models"].items():
        cut = "-" if m.get("truncated") is None else _with_ci(m, "truncated", 1, 100.0)
        rows.append(
            [
                label,
                _with_ci(m, "rouge_l_f1"),
                _with_ci(m, "teacher_nll"),
                fmt_num(m["teacher_nll_tokens"], "{:.4f}"),
                _with_ci(m, "mean_words", 1),
                fmt_num(m["mean_teacher_tokens"], "{:.1f}"),
                cut,
            ]
        )
    lines = [
        f"Teacher: `{report['teacher']}`; {report['num_rows']} prompts; "
        f"chat template: {'yes' if report['apply_chat_template'] else 'no'}. Each metric: the mean over prompts "
        "[bootstrap 95% interval].",
        "",
        *markdown_table(
            [
                "model",
                "ROUGE-L F1",
                "teacher NLL (row mean)",
                "teacher NLL (token mean)",
                "mean words",
                "mean teacher tokens",
                "cut off (%)",
            ],
            rows,
            "lrrrrrr",
        ),
        "",
        "ROUGE-L: against the teacher's response (higher: closer). Teacher NLL: mean negative "
        "log-likelihood per response token under the teacher (lower: more teacher-like).",
    ]
    paired = report.get("paired") or {}
    if paired:
        ref = report["compare_to"]
        rows = []
        for other, cmp in paired.items():
            r, n = cmp["rouge_l_f1"], cmp["teacher_nll"]
            rows.append(
                [
                    other,
                    f"{r['wins']}/{r['ties']}/{r['losses']}",
                    f"{r['diff']:+.4f} [{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}]",
                    f"{fmt_p(r['p_sign'])} / {fmt_p(r['p_perm'])}",
                    f"{n['wins']}/{n['ties']}/{n['losses']}",
                    f"{n['diff']:+.4f} [{n['diff_lo']:+.4f}, {n['diff_hi']:+.4f}]",
                    f"{fmt_p(n['p_sign'])} / {fmt_p(n['p_perm'])}",
                ]
            )
        lines += [
            "",
            f"### {ref} against each model, prompt by prompt",
            "",
            f"Wins / ties / losses of {ref}; the mean difference ({ref} minus the other) with its paired "
            "bootstrap 95% interval; p: two-sided exact sign test over the non-tied prompts, and a sign-flip "
            "permutation test of the mean difference.",
            "",
            *markdown_table(
                [
                    "against",
                    "ROUGE-L W/T/L",
                    "ROUGE-L diff",
                    "p sign / perm",
                    "teacher NLL W/T/L",
                    "NLL diff",
                    "p sign / perm",
                ],
                rows,
                "lrrrrrr",
            ),
        ]
    return lines


def offline_panels(report: dict) -> List[Panel]:
    """The panels of the offline ``report.png``: ROUGE-L, teacher NLL and length per model, with their 95%
    intervals when every model has one; the teacher's bar grey."""
    labels = list(report["models"])
    colors = ["#7f7f7f" if lab == TEACHER_LABEL else f"C{i}" for i, lab in enumerate(labels)]
    panels = []
    for key, title in (
        ("rouge_l_f1", "ROUGE-L F1 vs teacher (higher is closer)"),
        ("teacher_nll", "teacher NLL per token (lower is closer)"),
        ("mean_words", "mean response length (words)"),
    ):
        values = [report["models"][lab][key] for lab in labels]
        cis = [report["models"][lab].get("ci", {}).get(key) for lab in labels]
        err = None
        if all(ci and ci.get("n") for ci in cis):
            err = [
                [v - ci["lo"] for v, ci in zip(values, cis, strict=True)],
                [ci["hi"] - v for v, ci in zip(values, cis, strict=True)],
            ]
        panels.append(bars(title, labels, values, errors=err, colors=colors, value_labels=True))
    return panels


# --------------------------------------------------------------------------- the whole job


def release_memory(device) -> None:
    """Collect what was freed and, on a CUDA device, give the allocator's cached blocks back to the driver."""
    gc.collect()
    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_responses(
    teacher_path: str,
    teacher_responses: str,
    candidates: Dict[str, str],
    output_dir: str,
    *,
    apply_chat_template: bool = True,
    batch_size: int = 8,
    prompts: Optional[str] = None,
    chat_template: str = "",
    dtype: str = "fp32",  # the teacher's dtype on a GPU; a CPU runs fp32
    device: Optional[str] = None,
    progress: bool = True,
    compare_to: Optional[str] = "daDPO",
    served: Optional[Endpoint] = None,
) -> dict:
    """Score every candidate's responses against the teacher's; write the reports; return report.json's dict.
    ``served``: the teacher answers from that server (its log-probs; ``teacher_path`` names its tokenizer).

    Every metric gets its per-prompt bootstrap 95% interval (``ci``); when ``compare_to`` is one of the
    labels, ``paired`` holds its prompt-by-prompt comparison with every other candidate
    (:func:`~openrlhf.utils.stats.paired_comparison`: wins / ties / losses, mean difference with its
    interval, sign test and permutation test) for ROUGE-L F1 and the teacher NLL.

    ``candidates`` maps a label (e.g. ``dSFT``) to a response file whose ids must be
    exactly the teacher file's ids, each with the same prompt. ``prompts`` (optional)
    is the held-out prompt file: every teacher id must be one of its ids (its ``id``
    key, else the row's position counted from 0). ``chat_template`` replaces the
    teacher tokenizer's template.
    """
    # Cheap checks first: labels, files, ids; then the teacher.
    _check_options(candidates, batch_size)
    model_dtype = torch_dtype(dtype, "--ds.param_dtype")
    teacher_rows, cand_rows = _read_response_files(teacher_responses, candidates, prompts)
    teacher = _load_teacher(teacher_path, chat_template, apply_chat_template, model_dtype, device, served)

    ids = list(teacher_rows)
    sources = {TEACHER_LABEL: (teacher_rows, teacher_responses)}
    sources.update({label: (cand_rows[label], candidates[label]) for label in candidates})
    report: dict = {
        "teacher": teacher_path,
        "teacher_responses": teacher_responses,
        "candidates": dict(candidates),
        "num_rows": len(ids),
        "apply_chat_template": apply_chat_template,
        "models": {},
    }
    per_row: List[dict] = []
    per_prompt: Dict[str, Dict[str, list]] = {}
    for label, (rows, path) in sources.items():
        scores = _score_model(teacher, teacher_rows, rows, ids, path, label, batch_size=batch_size, progress=progress)
        report["models"][label] = _summary(path, scores, len(ids))
        per_prompt[label] = _per_prompt(scores)
        report["models"][label]["ci"] = {key: bootstrap_ci(v) for key, v in per_prompt[label].items() if v}
        per_row += _score_rows(label, teacher_rows, ids, scores)

    if compare_to in candidates:
        report["compare_to"] = compare_to
        report["paired"] = _paired(per_prompt, compare_to)
    # The teacher leaves the GPU now: the next stage (a vLLM engine checking free memory at start-up) must
    # find that memory free, not held in this process's allocator cache.
    where = teacher.device
    if teacher.served is not None:
        teacher.served.close()
    del teacher
    release_memory(where)
    _write_reports(output_dir, report, per_row)
    return report


@dataclass
class _Teacher:
    """The scoring teacher: its model on its device (or the server that answers for it), its prompt renderer
    and its pad id."""

    model: Any
    renderer: PromptRenderer
    pad_id: int
    device: torch.device
    served: Optional[ServedModel] = None


@dataclass
class _Scores:
    """One model's per-prompt scores: ROUGE-L against the teacher, teacher NLL (sum, tokens), words, finish reasons."""

    rouge: List[Dict[str, float]]
    nll: List[Tuple[float, int]]
    n_words: List[int]
    reasons: List[Optional[str]]

    def row_nll(self) -> List[float]:
        """The teacher's mean NLL per response token of each row (nan for a row without response tokens)."""
        return [s / n if n else float("nan") for s, n in self.nll]

    def truncated_known(self) -> bool:
        """Whether every row says its finish reason (the cut-off share is then reported)."""
        return all(r is not None for r in self.reasons)


def _check_options(candidates: Dict[str, str], batch_size: int) -> None:
    """A DataError for no candidate, an empty or reserved label, or a batch size below 1."""
    if not candidates:
        raise DataError("--candidate: give at least one candidate response file (label=FILE)")
    for label in candidates:
        if not label or label == TEACHER_LABEL:
            raise DataError(
                f"--candidate: label {label!r} is empty or reserved (the teacher's own row is {TEACHER_LABEL!r})"
            )
    if batch_size < 1:
        raise DataError(f"--train.micro_batch_size: must be >= 1, got {batch_size}")


def _read_response_files(
    teacher_responses: str, candidates: Dict[str, str], prompts: Optional[str]
) -> Tuple[Dict[str, dict], Dict[str, Dict[str, dict]]]:
    """The teacher's rows (ids checked against --prompts) and each candidate's (the teacher's ids and prompts)."""
    teacher_rows = read_responses(teacher_responses, "--teacher_responses")
    if prompts:
        prompt_ids = {str(r.get("id", i)) for i, r in enumerate(load_rows(prompts, what="--prompts"))}
        unknown = [i for i in teacher_rows if i not in prompt_ids]
        if unknown:
            raise DataError(
                f"--teacher_responses {teacher_responses}: {len(unknown)} ids are not in --prompts "
                f"{prompts} (e.g. {unknown[:3]})"
            )
    cand_rows: Dict[str, Dict[str, dict]] = {}
    for label, path in candidates.items():
        rows = read_responses(path, f"--candidate {label}")
        check_same_ids(teacher_rows, rows, label, path)
        cand_rows[label] = rows
    return teacher_rows, cand_rows


def _load_teacher(
    teacher_path: str, chat_template: str, apply_chat_template: bool, model_dtype, device, served=None
) -> _Teacher:
    """The teacher's tokenizer (a chat template when one is applied) and model on its device (fp32 on a CPU), or
    the server that answers for it (``served``: its model is not loaded)."""
    tokenizer = load_tokenizer(teacher_path, chat_template, what="--teacher.model_name_or_path")
    if apply_chat_template and not tokenizer.chat_template:
        raise DataError(
            f"--teacher.model_name_or_path {teacher_path}: the tokenizer has no chat template; give one with "
            "--teacher.tokenizer_chat_template, or score plain text with --no_chat_template"
        )
    renderer = PromptRenderer(tokenizer, apply_chat_template=apply_chat_template, model_path=teacher_path)
    if served is not None:
        client = ServedModel(served)
        client.info()  # a server that is down or serves another model: one line before any scoring
        return _Teacher(None, renderer, pad_token_id(tokenizer), torch.device("cpu"), client)
    where = pick_device(device)
    if where.type == "cpu":
        model_dtype = torch_dtype("fp32")  # bf16 / fp16 matmuls are several times slower on a CPU
    try:
        model = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=model_dtype)
    except OSError as e:
        raise DataError(f"--teacher.model_name_or_path: cannot load a model from {teacher_path!r}: {e}") from e
    model.to(where)
    return _Teacher(model, renderer, pad_token_id(tokenizer), where)


def _score_model(
    teacher: _Teacher, teacher_rows, rows, ids, path: str, label: str, *, batch_size: int, progress: bool
) -> _Scores:
    """Score one model's responses: the teacher's NLL of each, ROUGE-L against the teacher's, words, finish reasons."""
    pairs = [(teacher_rows[i]["prompt"], rows[i]["response"]) for i in ids]
    wheres = [f"{path}: row {rows[i]['_row']}" for i in ids]
    cut = [rows[i].get("finish_reason") == "length" for i in ids]
    nll = teacher_nll(
        teacher.served or teacher.model,
        teacher.renderer,
        pairs,
        pad_id=teacher.pad_id,
        batch_size=batch_size,
        wheres=wheres,
        cut_off=cut,
        progress=progress,
        desc=f"teacher NLL ({label})",
    )
    rouge = [rouge_l(_text(rows[i]["response"]), _text(teacher_rows[i]["response"])) for i in ids]
    n_words = [len(words(_text(rows[i]["response"]))) for i in ids]
    reasons = [rows[i].get("finish_reason") for i in ids]
    return _Scores(rouge, nll, n_words, reasons)


def _summary(path: str, s: _Scores, num_rows: int) -> dict:
    """One model's entry of report.json (its intervals added after): the means over its prompts."""
    row_nll = s.row_nll()
    tok_total = sum(n for _, n in s.nll)
    return {
        "file": path,
        "rouge_l_f1": _mean([r["f1"] for r in s.rouge]),
        "rouge_l_precision": _mean([r["precision"] for r in s.rouge]),
        "rouge_l_recall": _mean([r["recall"] for r in s.rouge]),
        "teacher_nll": _mean([x for x in row_nll if not math.isnan(x)]),
        "teacher_nll_tokens": sum(x for x, _ in s.nll) / tok_total if tok_total else float("nan"),
        "mean_words": _mean(s.n_words),
        "mean_teacher_tokens": _mean([n for _, n in s.nll]),
        "truncated": (_mean([r == "length" for r in s.reasons]) if s.truncated_known() else None),
        "rows": num_rows,
    }


def _per_prompt(s: _Scores) -> Dict[str, list]:
    """One model's per-prompt values of each metric (for the intervals and the paired comparison)."""
    return {
        "rouge_l_f1": [r["f1"] for r in s.rouge],
        "teacher_nll": s.row_nll(),
        "mean_words": [float(w) for w in s.n_words],
        "truncated": [float(r == "length") for r in s.reasons] if s.truncated_known() else [],
    }


def _score_rows(label: str, teacher_rows, ids, s: _Scores) -> List[dict]:
    """One model's rows of scores.jsonl, one per prompt."""
    return [
        {
            "id": teacher_rows[i]["id"],
            "model": label,
            "rouge_l_f1": r["f1"],
            "teacher_nll": x / n if n else None,
            "teacher_tokens": n,
            "words": w,
        }
        for i, r, (x, n), w in zip(ids, s.rouge, s.nll, s.n_words, strict=True)
    ]


def _paired(per_prompt: Dict[str, Dict[str, list]], compare_to: str) -> Dict[str, dict]:
    """``compare_to`` against every other candidate, prompt by prompt, on ROUGE-L F1 and the teacher NLL."""
    ref = per_prompt[compare_to]
    return {
        label: {
            "rouge_l_f1": paired_comparison(ref["rouge_l_f1"], v["rouge_l_f1"], higher_is_better=True),
            "teacher_nll": paired_comparison(ref["teacher_nll"], v["teacher_nll"], higher_is_better=False),
        }
        for label, v in per_prompt.items()
        if label not in (compare_to, TEACHER_LABEL)
    }


def _write_reports(output_dir: str, report: dict, per_row: List[dict]) -> None:
    """Write report.json, scores.jsonl, report.md and report.png into ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(output_dir, "scores.jsonl"), "w", encoding="utf-8") as f:
        for row in per_row:
            f.write(json.dumps(row) + "\n")
    write_markdown(os.path.join(output_dir, "report.md"), offline_markdown(report))
    write_chart(
        os.path.join(output_dir, "report.png"),
        offline_panels(report),
        panel_size=(4.2, 3.6 + 0.1 * len(report["models"])),
    )
