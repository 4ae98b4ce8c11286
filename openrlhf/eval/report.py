"""The judged report: ``report.json`` (model -> task -> numbers), ``report.md`` in the layout of the
paper's Table 1 (one row per model: MT-Bench, AlpacaEval, in-domain omega with W/T/L) and
``report.png``."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from openrlhf.utils.jsonl import write_json_atomic

TASK_ORDER = ("mtbench", "alpacaeval", "indomain")


def load_report(output_dir: str) -> Dict[str, Any]:
    path = os.path.join(output_dir, "report.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {"models": {}}


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def _finite(x: Any) -> float:
    return 0.0 if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def table_rows(report: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for name, tasks in report.get("models", {}).items():
        mt, ae, ind = tasks.get("mtbench", {}), tasks.get("alpacaeval", {}), tasks.get("indomain", {})
        ae_cell = "-"
        if ae:
            ae_cell = f"{_num(ae.get('win_rate'))} ± {_num(ae.get('standard_error'))}"
            if ae.get("length_controlled_win_rate") is not None:
                ae_cell += f" (LC {_num(ae['length_controlled_win_rate'])})"
        ind_cell = "-"
        if ind:
            ind_cell = f"{_num(ind.get('omega'), '{:+.1f}')}% ({ind['win']}/{ind['tie']}/{ind['lose']})"
        unparsed = sum(t.get("unparsed", 0) for t in tasks.values())
        hit = [f"{t['hit_token_limit']}/{t['answers']} {task}" for task, t in tasks.items()
               if t.get("hit_token_limit")]
        rows.append([name, _num(mt.get("score")) if mt else "-", ae_cell, ind_cell, str(unparsed),
                     ", ".join(hit) if hit else "0"])
    return rows


def write_markdown(report: Dict[str, Any], path: str) -> None:
    lines = ["| model | MT-Bench (1-10) | AlpacaEval win rate % ± s.e. | in-domain omega (W/T/L) | unparsed | "
             "answers at the token limit |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    lines.append("")
    for task, info in report.get("judge", {}).items():
        lines.append(f"{task}: judge `{info['model']}` at {info['base_url']}; {info['requests_sent']} requests sent, "
                     f"{info['from_cache']} judgments from the cache, {info['prompt_tokens']} prompt + "
                     f"{info['completion_tokens']} completion tokens.")
        if info.get("comparability"):
            lines.append(f"{task}: {info['comparability']}.")
    for name, tasks in report.get("models", {}).items():
        for task, numbers in tasks.items():
            if numbers.get("unparsed_ids"):
                lines.append(f"{name} / {task}: judgments without a verdict (not counted): "
                             f"{', '.join(map(str, numbers['unparsed_ids'][:20]))}"
                             + (" ..." if len(numbers["unparsed_ids"]) > 20 else ""))
            if numbers.get("hit_token_limit"):
                lines.append(f"{name} / {task}: {numbers['hit_token_limit']} of {numbers['answers']} answers stopped at "
                             f"the generation token limit: {', '.join(numbers['hit_token_limit_ids'][:20])}"
                             + (" ..." if len(numbers["hit_token_limit_ids"]) > 20 else ""))
            if numbers.get("length_controlled_note"):
                lines.append(f"{name} / {task}: length-controlled win rate {numbers['length_controlled_note']}")
    lines += ["", "In-domain: each model's response vs the teacher's on held-out prompts, judged in both orders; a win "
              "needs both orders, a loss both, anything else is a tie; omega = (W - L) / (W + T + L) x 100."]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def write_chart(report: Dict[str, Any], path: str) -> None:
    models = report.get("models", {})
    names = list(models)
    tasks = [t for t in TASK_ORDER if any(t in models[n] for n in names)]
    if not tasks:
        return
    fig = Figure(figsize=(5.0 * len(tasks), 3.8))
    FigureCanvasAgg(fig)
    for k, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), k + 1)
        have = [n for n in names if task in models[n]]
        if task == "mtbench":
            cats = sorted({c for n in have for c in models[n][task].get("per_category", {})})
            width = 0.8 / max(len(have), 1)
            for i, n in enumerate(have):
                vals = [models[n][task]["per_category"].get(c) or 0.0 for c in cats]
                ax.bar([j + i * width for j in range(len(cats))], vals, width=width, label=n)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))])
            ax.set_xticklabels(cats, rotation=40, ha="right", fontsize=7)
            ax.set_ylim(0, 10)
            ax.set_title("MT-Bench per category (1-10)", fontsize=9)
            ax.legend(fontsize=6)
        elif task == "alpacaeval":
            # A number the data did not give is NaN in memory and null in report.json: drawn as 0.
            vals = [_finite(models[n][task]["win_rate"]) for n in have]
            errs = [_finite(models[n][task]["standard_error"]) for n in have]
            ax.bar(range(len(have)), vals, yerr=errs, capsize=3)
            ax.set_xticks(range(len(have)))
            ax.set_xticklabels(have, rotation=30, ha="right", fontsize=7)
            ax.set_title("AlpacaEval win rate % (± s.e.)", fontsize=9)
        else:
            w = [models[n][task]["win"] for n in have]
            t = [models[n][task]["tie"] for n in have]
            lo = [models[n][task]["lose"] for n in have]
            x = range(len(have))
            ax.bar(x, w, color="C2", label="win")
            ax.bar(x, t, bottom=w, color="C7", label="tie")
            ax.bar(x, lo, bottom=[a + b for a, b in zip(w, t, strict=True)], color="C3", label="lose")
            ax.set_xticks(list(x))
            ax.set_xticklabels(have, rotation=30, ha="right", fontsize=7)
            ax.set_title("in-domain vs the teacher (W/T/L)", fontsize=9)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(report: Dict[str, Any], output_dir: str) -> None:
    write_json_atomic(os.path.join(output_dir, "report.json"), report)
    write_markdown(report, os.path.join(output_dir, "report.md"))
    write_chart(report, os.path.join(output_dir, "report.png"))
