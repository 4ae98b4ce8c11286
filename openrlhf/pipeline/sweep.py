"""The beta ablation of a sweep (paper Fig. 5): each metric against each swept flag, one line per
value of the other flag, written as sweep.json, sweep.md and sweep.png next to the report."""

from __future__ import annotations

import os
from typing import Any, Dict, List

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from openrlhf.utils.jsonl import write_json_atomic

# report.json keys drawn, with their titles (higher / lower is better).
METRICS = {"rouge_l_f1": "ROUGE-L F1 vs teacher (higher is closer)",
           "teacher_nll": "teacher NLL per token (lower is closer)"}


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
    lines = ["| " + " | ".join(flags + list(METRICS)) + " |", "|" + "---:|" * (len(flags) + len(METRICS))]
    for r in rows:
        lines.append("| " + " | ".join([str(r[f]) for f in flags] +
                                       [f"{r[k]:.4f}" if k in r else "-" for k in METRICS]) + " |")
    with open(os.path.join(out_dir, "sweep.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    _plot(rows, flags, os.path.join(out_dir, "sweep.png"))
    return rows


def _plot(rows: List[dict], flags: List[str], path: str) -> None:
    axes_flags = flags[:2]
    fig = Figure(figsize=(4.4 * len(axes_flags), 3.4 * len(METRICS)))
    FigureCanvasAgg(fig)
    for i, (metric, title) in enumerate(METRICS.items()):
        for j, x_flag in enumerate(axes_flags):
            ax = fig.add_subplot(len(METRICS), len(axes_flags), i * len(axes_flags) + j + 1)
            others = [f for f in axes_flags if f != x_flag]
            groups: Dict[Any, List[dict]] = {}
            for r in rows:
                groups.setdefault(tuple(r[f] for f in others), []).append(r)
            for key, group in sorted(groups.items(), key=lambda kv: kv[0]):
                group = sorted((r for r in group if metric in r), key=lambda r: r[x_flag])
                name = ", ".join(f"{f}={v}" for f, v in zip(others, key, strict=True)) or metric
                ax.plot([r[x_flag] for r in group], [r[metric] for r in group], marker="o", label=name)
            if all(r[x_flag] > 0 for r in rows):
                ax.set_xscale("log")
            ax.set_xlabel(x_flag)
            ax.set_title(title, fontsize=8)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)

