"""The evaluation package's one markdown-table writer, number cell and chart writer (openrlhf/eval/report.py,
openrlhf/eval/plots.py), which the offline report, the judged report and the beta sweep share."""

import json
import os
import struct

import pytest

from openrlhf.eval.plots import bars, marked_lines, write_chart
from openrlhf.eval.report import fmt_num, markdown_table, write_markdown
from openrlhf.pipeline.sweep import write_sweep_report


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])  # IHDR: width, height


def test_markdown_table_lines_and_alignment():
    assert markdown_table(["model", "score", "n"], [["a", "1.50", "3"], ["b", "-", "0"]], "lrr") == [
        "| model | score | n |",
        "|---|---:|---:|",
        "| a | 1.50 | 3 |",
        "| b | - | 0 |",
    ]
    with pytest.raises(ValueError, match="one of 'l' / 'r' per column"):
        markdown_table(["a", "b"], [], "l")
    with pytest.raises(ValueError, match="one of 'l' / 'r' per column"):
        markdown_table(["a", "b"], [], "lc")
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        markdown_table(["a", "b"], [["x"]], "lr")


def test_number_cells():
    assert fmt_num(None, "{:.2f}") == "-" and fmt_num(float("nan"), "{:.4f}") == "-"
    assert fmt_num(1.5, "{:.2f}") == "1.50" and fmt_num(-12.5, "{:+.1f}") == "-12.5" and fmt_num(3, "{:.1f}") == "3.0"


def test_write_markdown_ends_every_line(tmp_path):
    path = tmp_path / "t.md"
    write_markdown(str(path), ["a", "", "b"])
    assert path.read_text() == "a\n\nb\n"


def test_chart_grid_size_and_no_panel_no_file(tmp_path):
    empty = tmp_path / "none.png"
    assert write_chart(str(empty), []) is False and not empty.exists()

    path = tmp_path / "grid.png"
    panels = [
        bars("b", ["x", "y"], [1.0, 2.0], errors=[0.1, 0.2], value_labels=True),
        marked_lines("l", "beta", [("s", [0.1, 1.0], [2.0, 1.0])], log_x=True),
        bars("c", ["x"], [3.0]),
    ]
    assert write_chart(str(path), panels, cols=2, panel_size=(4.0, 3.0)) is True
    assert _png_size(path) == (880, 660)  # 2 x 2 panels of 4 x 3 inches at 110 dpi
    row = tmp_path / "row.png"
    write_chart(str(row), panels[:2], panel_size=(4.0, 3.0))  # one row by default
    assert _png_size(row) == (880, 330)


def test_sweep_report_files(tmp_path):
    """sweep.md: one right-aligned row per grid point (a metric the report lacks or that is NaN is '-');
    sweep.png: metrics x swept flags panels."""
    report = {
        "models": {
            "p1": {"rouge_l_f1": 0.25, "teacher_nll": 2.0},
            "p2": {"rouge_l_f1": 0.5, "teacher_nll": float("nan")},
            "p3": {"rouge_l_f1": 0.125},
        }
    }
    points = {
        "p1": {"model.beta": 0.1, "teacher.beta": 0.01},
        "p2": {"model.beta": 0.5, "teacher.beta": 0.01},
        "p3": {"model.beta": 0.5, "teacher.beta": 0.1},
        "gone": {"model.beta": 1.0, "teacher.beta": 1.0},
    }
    rows = write_sweep_report(report, points, str(tmp_path))
    assert [r["label"] for r in rows] == ["p1", "p2", "p3"]
    assert (tmp_path / "sweep.md").read_text().splitlines() == [
        "| model.beta | teacher.beta | rouge_l_f1 | teacher_nll |",
        "|---:|---:|---:|---:|",
        "| 0.1 | 0.01 | 0.2500 | 2.0000 |",
        "| 0.5 | 0.01 | 0.5000 | - |",
        "| 0.5 | 0.1 | 0.1250 | - |",
    ]
    saved = json.load(open(tmp_path / "sweep.json"))
    assert saved["flags"] == ["model.beta", "teacher.beta"] and len(saved["points"]) == 3
    assert saved["points"][1]["teacher_nll"] is None  # strict JSON
    assert _png_size(os.path.join(tmp_path, "sweep.png")) == (968, 748)  # 2 metrics x 2 flags, 4.4 x 3.4 in


def test_judged_report_says_how_many_judge_replies_stopped_at_max_tokens():
    from openrlhf.eval.report import judged_markdown

    info = {"model": "j", "base_url": "http://h/v1", "requests_sent": 4, "from_cache": 1, "prompt_tokens": 90}
    info.update(completion_tokens=2048, max_tokens=512, cut_by_max_tokens=3)

    def judge_line():
        return next(x for x in judged_markdown({"judge": {"mtbench": info}}) if x.startswith("mtbench: judge"))

    assert judge_line() == (
        "mtbench: judge `j` at http://h/v1; 4 requests sent, 1 judgments from the cache, 90 prompt + 2048 "
        "completion tokens; 3 of the replies sent stopped at the token limit (max_tokens 512 or the judge's "
        "context): a reply cut before its verdict is unparsed."
    )
    info.update(cut_by_max_tokens=0)
    assert judge_line().endswith("2048 completion tokens.")


def test_weighted_bootstrap_and_paired_comparison_pool_by_hand():
    """IFEval's instruction-level accuracy pools instructions over prompts: per-prompt shares weighted by each
    prompt's instruction count. Prompts with 1, 2 and 3 instructions, followed 1, 1 and 0 times: pooled 2/6,
    not the mean of the shares (1 + 1/2 + 0) / 3."""
    from openrlhf.utils.stats import bootstrap_ci, paired_comparison

    shares, counts = [1.0, 0.5, 0.0], [1, 2, 3]
    ci = bootstrap_ci(shares, weights=counts, n_boot=4000)
    assert ci["mean"] == pytest.approx(2 / 6) and ci["n"] == 3
    assert 0.0 <= ci["lo"] < 2 / 6 < ci["hi"] <= 1.0
    assert bootstrap_ci(shares)["mean"] == pytest.approx(0.5)  # unweighted: the mean of the shares
    assert bootstrap_ci([None, 1.0, float("nan"), 0.0], weights=[9, 1, 9, 3])["mean"] == pytest.approx(0.25)
    # every resample of one prompt repeated is that prompt's share
    assert bootstrap_ci([0.5], weights=[4]) == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 1}
    with pytest.raises(ValueError, match="2 weights for 3 values"):
        bootstrap_ci(shares, weights=[1, 2])

    # A follows 1/1, 2/2, 0/3; B 1/1, 1/2, 3/3: pooled 3/6 vs 5/6, difference -2/6; A wins 1 prompt, loses 1
    r = paired_comparison([1.0, 1.0, 0.0], [1.0, 0.5, 1.0], weights=counts)
    assert (r["wins"], r["ties"], r["losses"]) == (1, 1, 1)
    assert r["diff"] == pytest.approx(-2 / 6) and r["diff_lo"] <= -2 / 6 <= r["diff_hi"]
    assert r["p_sign"] == 1.0 and 0 < r["p_perm"] <= 1
    assert paired_comparison([1.0, 1.0, 0.0], [1.0, 0.5, 1.0])["diff"] == pytest.approx(-0.5 / 3)  # unweighted
