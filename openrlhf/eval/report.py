"""The evaluation reports.

Every report's markdown comes from here: :func:`markdown_table` (the one table writer), :func:`fmt_num` (the one
format of a number cell: ``-`` for a missing one) and :func:`write_markdown`; every chart from
:func:`openrlhf.eval.plots.write_chart`. Their users: the offline report (:mod:`openrlhf.eval.offline`), the judged
report below and the pipeline's beta ablation (:mod:`openrlhf.pipeline.sweep`).

The judged report: ``report.json`` (model -> task -> numbers), ``report.md`` in the layout of the paper's Table 1
(one row per model: MT-Bench, AlpacaEval, in-domain omega with W/T/L, IFEval) with IFEval's own tables (the four
official metrics with their intervals, every pair of models prompt by prompt, the accuracy per instruction type),
and ``report.png``."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Sequence

from openrlhf.eval.plots import SMALL, Panel, bars, grouped_bars, stacked_bars, write_chart
from openrlhf.utils.jsonl import write_json_atomic

TASK_ORDER = ("mtbench", "alpacaeval", "indomain", "ifeval")
# IFEval's four official metrics (report.json's names) and their short labels.
IFEVAL_METRICS = (
    ("prompt_level_strict_acc", "prompt strict"),
    ("inst_level_strict_acc", "inst strict"),
    ("prompt_level_loose_acc", "prompt loose"),
    ("inst_level_loose_acc", "inst loose"),
)


# --------------------------------------------------------------------------- markdown, for every report


def fmt_num(x: Any, fmt: str) -> str:
    """``x`` formatted with ``fmt``; ``-`` when it is missing (None) or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def fmt_p(x: float) -> str:
    """A p-value cell: ``<0.001`` below that, else three decimals."""
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> List[str]:
    """The lines of a markdown table: ``header``, the alignment row (``align``: one letter per column, ``l``
    left, ``r`` right) and one line per row of cells."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one of 'l' / 'r' per column ({len(header)} columns)")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells for {len(header)} columns: {row!r}")
    return ["| " + " | ".join(header) + " |", "|" + "".join("---|" if a == "l" else "---:|" for a in align)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def write_markdown(path: str, lines: Sequence[str]) -> None:
    """Write ``lines`` to ``path``, each ended by a newline."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- the judged report


def load_report(output_dir: str) -> Dict[str, Any]:
    path = os.path.join(output_dir, "report.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {"models": {}}


def _finite(x: Any) -> float:
    return 0.0 if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def table_rows(report: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for name, tasks in report.get("models", {}).items():
        mt, ae, ind = tasks.get("mtbench", {}), tasks.get("alpacaeval", {}), tasks.get("indomain", {})
        ae_cell = "-"
        if ae:
            ae_cell = f"{fmt_num(ae.get('win_rate'), '{:.2f}')} ± {fmt_num(ae.get('standard_error'), '{:.2f}')}"
            if ae.get("length_controlled_win_rate") is not None:
                lc_se = fmt_num(ae.get("length_controlled_standard_error"), "{:.2f}")
                ae_cell += f" (LC {fmt_num(ae['length_controlled_win_rate'], '{:.2f}')} ± {lc_se})"
            if ae.get("avg_length") is not None:
                ae_cell += f", avg length {fmt_num(ae['avg_length'], '{:.0f}')}"
        ind_cell = "-"
        if ind:
            ind_cell = (
                f"{fmt_num(ind.get('omega'), '{:+.1f}')}%{_interval(ind, 'omega', '{:+.1f}')} "
                f"({ind['win']}/{ind['tie']}/{ind['lose']})"
            )
        ife = tasks.get("ifeval", {})
        ife_cell = "-"
        if ife:
            ife_cell = f"{_pct(ife.get('prompt_level_strict_acc'))} / {_pct(ife.get('inst_level_strict_acc'))}"
        unparsed = sum(t.get("unparsed", 0) for t in tasks.values())
        hit = [f"{t['hit_token_limit']}/{t['answers']} {task}" for task, t in tasks.items() if t.get("hit_token_limit")]
        rows.append(
            [
                name,
                fmt_num(mt.get("score"), "{:.2f}") + _interval(mt, "score", "{:.2f}") if mt else "-",
                ae_cell,
                ind_cell,
                ife_cell,
                str(unparsed),
                ", ".join(hit) if hit else "0",
            ]
        )
    return rows


def _interval(numbers: Dict[str, Any], key: str, fmt: str) -> str:
    """`` [lo, hi]`` of ``key``'s bootstrap interval (``key_lo`` / ``key_hi``), '' when the numbers have none."""
    lo, hi = numbers.get(f"{key}_lo"), numbers.get(f"{key}_hi")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f" [{fmt.format(lo)}, {fmt.format(hi)}]"


def paired_cells(c: Dict[str, Any], fmt: str, scale: float = 1.0) -> List[str]:
    """A paired comparison's cells: W/T/L, the difference A - B [its 95% interval] (x ``scale``), p sign / perm."""
    diff = [fmt.format(c[k] * scale) for k in ("diff", "diff_lo", "diff_hi")]
    return [
        f"{c['wins']}/{c['ties']}/{c['losses']}",
        f"{diff[0]} [{diff[1]}, {diff[2]}]",
        f"{fmt_p(c['p_sign'])} / {fmt_p(c['p_perm'])}",
    ]


_JUDGED_PAIRS = {
    "mtbench": ("MT-Bench", "{:+.2f}"),
    "alpacaeval": ("AlpacaEval", "{:+.2f}"),
    "indomain": ("in-domain", "{:+.1f}"),
}


def judged_pairs_markdown(report: Dict[str, Any]) -> List[str]:
    """Every pair of judged models item by item (the ``paired`` numbers of the judged tasks)."""
    rows = []
    for task, (label, fmt) in _JUDGED_PAIRS.items():
        for pair, c in report.get("paired", {}).get(task, {}).items():
            if not c.get("n"):
                continue
            rows.append([pair, label, *paired_cells(c, fmt)])
    if not rows:
        return []
    return [
        "",
        "Each pair of models item by item (A vs B, on the items both were judged on): A's wins / ties / losses; "
        "the difference A - B (MT-Bench: points of the 1-10 grade, a question's parsed grades averaged; "
        "AlpacaEval: win-rate points; in-domain: omega points, a win +100, a loss -100) with its paired "
        "bootstrap 95% interval; p: two-sided exact sign test over the non-tied items / sign-flip permutation test.",
        "",
        *markdown_table(["A vs B", "benchmark", "W/T/L", "A - B [95%]", "p sign / perm"], rows, "llrrr"),
    ]


def judged_markdown(report: Dict[str, Any]) -> List[str]:
    """The lines of the judged ``report.md``: the Table 1 layout, then the judge's costs and notes."""
    lines = markdown_table(
        [
            "model",
            "MT-Bench (1-10) [95%]",
            "AlpacaEval win rate % ± s.e.",
            "in-domain omega [95%] (W/T/L)",
            "IFEval strict % (prompt / inst)",
            "unparsed",
            "answers at the token limit",
        ],
        table_rows(report),
        "lrrrrrr",
    )
    lines.append("")
    for task, info in report.get("judge", {}).items():
        if "base_url" not in info:  # scored by a program (IFEval): its own section below
            continue
        lines.append(
            f"{task}: judge `{info['model']}` at {info['base_url']}; {info['requests_sent']} requests sent, "
            f"{info['from_cache']} judgments from the cache, {info['prompt_tokens']} prompt + "
            f"{info['completion_tokens']} completion tokens"
            + (
                f"; {info['cut_by_max_tokens']} of the replies sent stopped at the token limit (max_tokens "
                f"{info['max_tokens']} or the judge's context): a reply cut before its verdict is unparsed."
                if info.get("cut_by_max_tokens")
                else "."
            )
        )
        if info.get("comparability"):
            lines.append(f"{task}: {info['comparability']}.")
    for name, tasks in report.get("models", {}).items():
        for task, numbers in tasks.items():
            if numbers.get("unparsed_ids"):
                lines.append(
                    f"{name} / {task}: judgments without a verdict (not counted): "
                    f"{', '.join(map(str, numbers['unparsed_ids'][:20]))}"
                    + (" ..." if len(numbers["unparsed_ids"]) > 20 else "")
                )
            if numbers.get("hit_token_limit"):
                lines.append(
                    f"{name} / {task}: {numbers['hit_token_limit']} of {numbers['answers']} answers stopped at "
                    f"the generation token limit: {', '.join(numbers['hit_token_limit_ids'][:20])}"
                    + (" ..." if len(numbers["hit_token_limit_ids"]) > 20 else "")
                )
            if numbers.get("length_controlled_note"):
                lines.append(f"{name} / {task}: length-controlled win rate {numbers['length_controlled_note']}")
    lines += [
        "",
        "In-domain: each model's response vs the teacher's on held-out prompts, judged in both orders; a win "
        "needs both orders, a loss both, anything else is a tie; omega = (W - L) / (W + T + L) x 100. "
        "[95%]: percentile bootstrap interval over the prompts (MT-Bench: over the questions, both turns together).",
    ]
    return lines + judged_pairs_markdown(report) + ifeval_markdown(report)


def _pct(x: Any) -> str:
    """A fraction as a percent cell (one decimal); ``-`` when missing."""
    return fmt_num(None if x is None else x * 100, "{:.1f}")


def _pct_ci(numbers: Dict[str, Any], metric: str) -> str:
    """``metric`` as a percent with its bootstrap interval, when the numbers have one."""
    ci = numbers.get("ci", {}).get(metric)
    if not ci or not ci.get("n"):
        return _pct(numbers.get(metric))
    return f"{_pct(numbers.get(metric))} [{ci['lo'] * 100:.1f}, {ci['hi'] * 100:.1f}]"


def ifeval_markdown(report: Dict[str, Any]) -> List[str]:
    """IFEval's section of the judged ``report.md`` (none when no model has IFEval numbers): the four official
    metrics per model, every pair of models prompt by prompt, the accuracy per instruction type, the notes."""
    models = {n: t["ifeval"] for n, t in report.get("models", {}).items() if "ifeval" in t}
    if not models:
        return []
    info = report.get("judge", {}).get("ifeval", {})
    rows = [
        [name]
        + [_pct_ci(m, metric) for metric, _ in IFEVAL_METRICS]
        + [f"{m.get('hit_token_limit', 0)}/{m.get('answers', m.get('prompts', 0))}"]
        for name, m in models.items()
    ]
    lines = [
        "",
        "### IFEval",
        "",
        f"{info.get('scorer', 'IFEval')}; accuracy % [bootstrap 95% interval over prompts]. Prompt level: every "
        "instruction of the prompt followed; instruction level: all instructions pooled. Loose: also the response "
        "without its first / last line or without '*'.",
        "",
        *markdown_table(
            ["model", *(label for _, label in IFEVAL_METRICS), "answers at the token limit"],
            rows,
            "lrrrrr",
        ),
    ]
    paired = report.get("paired", {}).get("ifeval", {})
    if paired:
        rows = []
        for pair, cmp in paired.items():
            for metric, label in IFEVAL_METRICS:
                rows.append([pair, label, *paired_cells(cmp[metric], "{:+.1f}", scale=100)])
        lines += [
            "",
            "Each pair prompt by prompt (A vs B): A's wins / ties / losses over prompts; the difference A - B in "
            "points with its paired bootstrap 95% interval (instruction level: each prompt weighted by its "
            "instruction count); p: two-sided exact sign test over the non-tied prompts / sign-flip permutation test.",
            "",
            *markdown_table(["A vs B", "metric", "W/T/L", "A - B [95%]", "p sign / perm"], rows, "llrrr"),
        ]
    types = sorted({t for m in models.values() for t in m.get("per_instruction_type", {})})
    if types:
        rows = []
        for t in types:
            n = next(
                m["per_instruction_type"][t]["n"] for m in models.values() if t in m.get("per_instruction_type", {})
            )
            cells = []
            for m in models.values():
                acc = m.get("per_instruction_type", {}).get(t)
                cells.append(f"{acc['strict'] * 100:.0f} / {acc['loose'] * 100:.0f}" if acc else "-")
            rows.append([t, str(n), *cells])
        lines += [
            "",
            "Accuracy % per instruction type (strict / loose):",
            "",
            *markdown_table(["instruction type", "n", *models], rows, "lr" + "r" * len(models)),
        ]
    notes = list(info.get("notes", []))
    if info.get("comparability"):
        notes.append(info["comparability"])
    if notes:
        lines += [""] + [f"ifeval: {x}." for x in notes]
    return lines


def judged_panels(report: Dict[str, Any]) -> List[Panel]:
    """The panels of the judged ``report.png``, one per task any model has, in TASK_ORDER."""
    models = report.get("models", {})
    names = list(models)
    panels = []
    for task in TASK_ORDER:
        have = [n for n in names if task in models[n]]
        if not have:
            continue
        numbers = [models[n][task] for n in have]
        if task == "mtbench":
            cats = sorted({c for m in numbers for c in m.get("per_category", {})})
            panels.append(
                grouped_bars(
                    "MT-Bench per category (1-10)",
                    cats,
                    {n: [m["per_category"].get(c) or 0.0 for c in cats] for n, m in zip(have, numbers, strict=True)},
                    ylim=(0, 10),
                )
            )
        elif task == "alpacaeval":
            # A number the data did not give is NaN in memory and null in report.json: drawn as 0.
            panels.append(
                bars(
                    "AlpacaEval win rate % (± s.e.)",
                    have,
                    [_finite(m["win_rate"]) for m in numbers],
                    errors=[_finite(m["standard_error"]) for m in numbers],
                    fontsize=SMALL,
                )
            )
        elif task == "ifeval":
            panels.append(
                grouped_bars(
                    "IFEval (official metrics)",
                    [label for _, label in IFEVAL_METRICS],
                    {
                        n: [_finite(m.get(metric)) for metric, _ in IFEVAL_METRICS]
                        for n, m in zip(have, numbers, strict=True)
                    },
                    ylim=(0, 1),
                )
            )
        else:
            panels.append(
                stacked_bars(
                    "in-domain vs the teacher (W/T/L)",
                    have,
                    [
                        (part, [m[part] for m in numbers], color)
                        for part, color in (("win", "C2"), ("tie", "C7"), ("lose", "C3"))
                    ],
                )
            )
    return panels


def write_report(report: Dict[str, Any], output_dir: str) -> None:
    write_json_atomic(os.path.join(output_dir, "report.json"), report)
    write_markdown(os.path.join(output_dir, "report.md"), judged_markdown(report))
    write_chart(os.path.join(output_dir, "report.png"), judged_panels(report), panel_size=(5.0, 3.8))
