"""The one chart writer of the evaluation reports (``report.png`` of the offline and the judged report,
``sweep.png`` of the pipeline's beta ablation): a grid of panels drawn with matplotlib's Agg backend (no
display needed) and saved as a PNG, and the panel kinds those charts are made of.

A panel is a function that draws on one matplotlib ``Axes``; the panel kinds below return such functions.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Panel = Callable[[Axes], None]

DPI = 110
TITLE_SIZE = 9
SMALL = 7  # tick labels and value labels of the crowded panels
LEGEND_SIZE = 6


def write_chart(
    path: str, panels: Sequence[Panel], *, cols: Optional[int] = None, panel_size: Tuple[float, float] = (4.4, 3.4)
) -> bool:
    """Draw ``panels`` row by row on a grid of ``cols`` columns (default: one row), each panel
    ``panel_size`` inches (width, height), and save the PNG to ``path``. No panel: no file (False)."""
    if not panels:
        return False
    cols = cols or len(panels)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows))
    FigureCanvasAgg(fig)
    for k, draw in enumerate(panels):
        draw(fig.add_subplot(rows, cols, k + 1))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return True


def _names_below(
    ax: Axes, positions: Sequence[float], names: Sequence[str], fontsize: Optional[int], rotation: int = 30
) -> None:
    ax.set_xticks(list(positions))
    ax.set_xticklabels(names, rotation=rotation, ha="right", **({} if fontsize is None else {"fontsize": fontsize}))


def bars(
    title: str,
    names: Sequence[str],
    values: Sequence[float],
    *,
    errors: Optional[Sequence[Sequence[float]]] = None,
    colors: Optional[Sequence[str]] = None,
    value_labels: bool = False,
    fontsize: Optional[int] = None,
) -> Panel:
    """One bar per name. ``errors``: symmetric (one list) or [below, above] error bars; ``value_labels``
    writes each value (3 significant digits) on its bar; ``fontsize``: of the names (matplotlib's default
    when None)."""

    def draw(ax: Axes) -> None:
        drawn = ax.bar(range(len(names)), values, color=colors, yerr=errors, capsize=3 if errors else 0)
        _names_below(ax, range(len(names)), names, fontsize)
        ax.set_title(title, fontsize=TITLE_SIZE)
        if value_labels:
            for bar, v in zip(drawn, values, strict=True):
                ax.annotate(
                    f"{v:.3g}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=SMALL,
                )

    return draw


def stacked_bars(title: str, names: Sequence[str], parts: Sequence[Tuple[str, Sequence[float], str]]) -> Panel:
    """One bar per name made of ``parts`` (label, values, colour), stacked bottom-up in that order."""

    def draw(ax: Axes) -> None:
        bottom = [0.0] * len(names)
        for k, (label, values, color) in enumerate(parts):
            ax.bar(range(len(names)), values, bottom=bottom if k else None, color=color, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        _names_below(ax, range(len(names)), names, SMALL)
        ax.set_title(title, fontsize=TITLE_SIZE)
        ax.legend(fontsize=LEGEND_SIZE)

    return draw


def grouped_bars(
    title: str, groups: Sequence[str], series: Dict[str, Sequence[float]], *, ylim: Optional[Tuple[float, float]] = None
) -> Panel:
    """One group of bars per entry of ``groups`` (the x axis), one bar of each group per series (name ->
    one value per group), with a legend of the series."""

    def draw(ax: Axes) -> None:
        width = 0.8 / max(len(series), 1)
        for i, (name, values) in enumerate(series.items()):
            ax.bar([j + i * width for j in range(len(groups))], values, width=width, label=name)
        _names_below(ax, [j + 0.4 - width / 2 for j in range(len(groups))], groups, SMALL, rotation=40)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(title, fontsize=TITLE_SIZE)
        ax.legend(fontsize=LEGEND_SIZE)

    return draw


def marked_lines(
    title: str, xlabel: str, series: Sequence[Tuple[str, Sequence[Any], Sequence[float]]], *, log_x: bool = False
) -> Panel:
    """One line with markers per series (label, xs, ys), a legend, log x axis when ``log_x``."""

    def draw(ax: Axes) -> None:
        for label, xs, ys in series:
            ax.plot(list(xs), list(ys), marker="o", label=label)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=LEGEND_SIZE)

    return draw
