"""The beta ablation of a sweep (paper Fig. 5): each metric against each swept flag, one line per
value of the other flag, written as sweep.json, sweep.md and sweep.png next to the report."""

from __future__ import annotations

import os
from typing import Any, Dict, List

from openrlhf.eval.plots import Panel, marked_lines, write_chart
from openrlhf.eval.report import fmt_num, markdown_table, write_markdown
from openrlhf.utils.jsonl import write_json_atomic

# report.json keys drawn, with their titles (higher / lower is better).
METRICS = {
    "rouge_l_f1": "ROUGE-L F1 vs teacher (higher is closer)",
    "teacher_nll": "teacher NLL per token (lower is closer)",
}


def sweep_rows(report: dict, points: Dict[str, Dict[str, Any]]) -> List[dict]:
    """One row per grid point: its flag values and its metrics from ``report["models"]``."""
    rows = []
    for label, point in points.items():
        m = report["models"].get(label)
        if m is None:
            continue
        rows.append({"label": label, **point, **{k: m[k] for k in METRICS if k in m}})
    return rows


def write_sweep_report(report: dict, points: Dict[str, Dict[str, Any]], out_dir: str) -> List[dict]:
    """Write sweep.json / sweep.md / sweep.png for the grid points (label -> {flag: value})."""
    rows = sweep_rows(report, points)
    flags = list(next(iter(points.values())).keys()) if points else []
    write_json_atomic(os.path.join(out_dir, "sweep.json"), {"flags": flags, "points": rows})
    table = [[str(r[f]) for f in flags] + [fmt_num(r.get(k), "{:.4f}") for k in METRICS] for r in rows]
    write_markdown(
        os.path.join(out_dir, "sweep.md"),
        markdown_table(flags + list(METRICS), table, "r" * (len(flags) + len(METRICS))),
    )
    axes_flags = flags[:2]
    write_chart(
        os.path.join(out_dir, "sweep.png"), _panels(rows, axes_flags), cols=len(axes_flags), panel_size=(4.4, 3.4)
    )
    return rows


def _panels(rows: List[dict], axes_flags: List[str]) -> List[Panel]:
    """One panel per metric (a row of the grid) and swept flag (a column): the metric against that flag, one
    line per value of the other flag; a log x axis when every value of the flag is positive."""
    panels = []
    for metric, title in METRICS.items():
        for x_flag in axes_flags:
            others = [f for f in axes_flags if f != x_flag]
            groups: Dict[Any, List[dict]] = {}
            for r in rows:
                groups.setdefault(tuple(r[f] for f in others), []).append(r)
            series = []
            for key, group in sorted(groups.items(), key=lambda kv: kv[0]):
                group = sorted((r for r in group if metric in r), key=lambda r: r[x_flag])
                name = ", ".join(f"{f}={v}" for f, v in zip(others, key, strict=True)) or metric
                series.append((name, [r[x_flag] for r in group], [r[metric] for r in group]))
            panels.append(marked_lines(title, x_flag, series, log_x=all(r[x_flag] > 0 for r in rows)))
    return panels
