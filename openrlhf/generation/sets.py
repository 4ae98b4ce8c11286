"""Step 3 of Algorithm 1: the preference set and the SFT set from two generation files.

Teacher and student rows (outputs of ``openrlhf.cli.generate``) are joined by ``id``.

Written to ``output_dir`` (each atomically):

- ``preference.jsonl``: ``{"id", "prompt", "chosen": teacher response, "rejected": student
  response}`` (train with ``--data.prompt_key prompt``: :data:`PREFERENCE_SET_FLAGS`);
- ``sft.jsonl``: ``{"id", "input": prompt, "output": teacher response}`` (train with
  ``--data.output_key output``: :data:`SFT_SET_FLAGS`);
- ``report.json``: the counts below.

Policy (every drop is counted in the report):

- an id in only one of the two files: dropped (``only_teacher`` / ``only_student``);
- the teacher response is empty (after strip): dropped from both sets (``teacher_empty``);
- the teacher response is truncated (``finish_reason`` is ``length``): dropped from both sets
  (``teacher_truncated``), or, with ``keep_unfinished``, kept and marked
  ``chosen_unfinished`` / ``output_unfinished`` so that it is trained and scored without the
  end-of-turn token it never produced (``teacher_truncated_kept``); a truncated student
  response is then marked ``rejected_unfinished`` the same way;
- teacher and student responses identical after strip: no preference to learn, so
  dropped from the preference set only (``identical``), kept in the SFT set;
- the student response is empty (after strip): dropped from the preference set only
  (``student_empty``; the preference dataset would refuse an empty rejected answer);
  a truncated student response is kept (it is a legitimate losing answer).
- the same id with different prompts in the two files: an error (the files were
  generated from different prompt sets), as are duplicate ids and rows without
  ``id`` / the prompt key / ``response``.

Rows come out in the order of the teacher file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from openrlhf.datasets.loading import DataError
from openrlhf.generation.outputs import ID_KEY
from openrlhf.utils.errors import raise_problems
from openrlhf.utils.jsonl import read_jsonl, write_json_atomic, write_jsonl_atomic
from openrlhf.utils.paths import output_dir_problem

PREFERENCE_FILE = "preference.jsonl"
SFT_FILE = "sft.jsonl"
REPORT_FILE = "report.json"
# The data flags that read the two sets (the trainers' own defaults are OpenRLHF's: no prompt column
# for preference pairs, no output column for SFT).
PREFERENCE_SET_FLAGS = {"data.prompt_key": "prompt", "data.chosen_key": "chosen", "data.rejected_key": "rejected"}
SFT_SET_FLAGS = {"data.input_key": "input", "data.output_key": "output"}


def _index(path: str, what: str, prompt_key: str) -> Tuple[Dict[Any, dict], List[Any], Dict[Any, int]]:
    """``({id: row}, ids in file order, {id: line})``; one DataError listing bad rows."""
    rows: Dict[Any, dict] = {}
    order: List[Any] = []
    line_of: Dict[Any, int] = {}
    problems: List[str] = []
    lines = read_jsonl(path, what)
    if not lines:
        raise DataError(f"{what} {path}: no rows")
    for n, row in lines:
        missing = [k for k in (ID_KEY, prompt_key, "response") if k not in row]
        if missing:
            problems.append(f"line {n}: missing key(s) {missing} (keys: {sorted(row)[:10]})")
            continue
        rid = row[ID_KEY]
        if isinstance(rid, (list, dict)):
            problems.append(f"line {n}: the id is a {type(rid).__name__}")
            continue
        if not isinstance(row["response"], str):
            problems.append(f"line {n}: 'response' is a {type(row['response']).__name__}, expected a string")
            continue
        if rid in rows:
            problems.append(f"line {n}: duplicate id {rid!r} (first on line {line_of[rid]})")
            continue
        rows[rid] = row
        order.append(rid)
        line_of[rid] = n
    raise_problems(problems, f"{what} {path}", len(lines))
    return rows, order, line_of


@dataclass
class _Joined:
    """The two sets from the joined files (in teacher order) and the count of every kept and dropped row."""

    counts: Dict[str, int]
    preference: List[dict]
    sft: List[dict]


def build_sets(
    teacher_path: str,
    student_path: str,
    output_dir: str,
    prompt_key: str = "prompt",
    log=print,
    keep_unfinished: bool = False,
) -> Dict[str, Any]:
    """Write the preference and SFT sets (see the module doc); returns the report."""
    _check_paths(teacher_path, student_path, output_dir)
    teacher, t_order, t_line = _index(teacher_path, "--teacher_responses", prompt_key)
    student, _, s_line = _index(student_path, "--student_responses", prompt_key)
    _check_shared_ids(teacher_path, student_path, t_order, student)
    _check_same_prompts(teacher_path, student_path, prompt_key, teacher, t_order, t_line, student, s_line)
    joined = _join(teacher, t_order, student, prompt_key, keep_unfinished)

    os.makedirs(output_dir, exist_ok=True)
    pref_path = os.path.join(output_dir, PREFERENCE_FILE)
    sft_path = os.path.join(output_dir, SFT_FILE)
    write_jsonl_atomic(pref_path, joined.preference)
    write_jsonl_atomic(sft_path, joined.sft)
    report = {
        "teacher": os.path.abspath(teacher_path),
        "student": os.path.abspath(student_path),
        "teacher_model": next((teacher[r].get("model") for r in t_order), None),
        "student_model": next((r.get("model") for r in student.values()), None),
        **joined.counts,
        "preference_rows": len(joined.preference),
        "sft_rows": len(joined.sft),
        "preference_path": os.path.abspath(pref_path),
        "sft_path": os.path.abspath(sft_path),
        "keep_unfinished": keep_unfinished,
        "policy": _policy(keep_unfinished),
    }
    write_json_atomic(os.path.join(output_dir, REPORT_FILE), report)
    _log_summary(log, joined, output_dir)
    _check_preference_not_empty(joined, sft_path)
    return report


def _check_paths(teacher_path: str, student_path: str, output_dir: str) -> None:
    """A DataError for an output folder that cannot be one, or the same file as --teacher_responses and --student_responses."""
    problem = output_dir_problem(output_dir)
    if problem:
        raise DataError(f"--output_dir: {problem}")
    if os.path.realpath(teacher_path) == os.path.realpath(student_path):
        raise DataError(
            f"--teacher_responses and --student_responses are the same file ({teacher_path}): every pair would be the "
            "same response twice, leaving no preference to learn"
        )


def _check_shared_ids(teacher_path: str, student_path: str, t_order: List[Any], student: Dict[Any, dict]) -> None:
    """A DataError when the two files share no id (saying so when their ids are of different types)."""
    if any(rid in student for rid in t_order):
        return
    t_types = sorted({type(r).__name__ for r in t_order})
    s_types = sorted({type(r).__name__ for r in student})
    hint = (
        f"; the ids are of different types (--teacher_responses: {', '.join(t_types)}, --student_responses: "
        f"{', '.join(s_types)}), so 0 and '0' never match"
        if t_types != s_types
        else ""
    )
    raise DataError(
        f"--teacher_responses {teacher_path} and --student_responses {student_path} share no id "
        f"(e.g. {t_order[:3]} vs {list(student)[:3]}){hint}; generate both from the same prompt file"
    )


def _check_same_prompts(
    teacher_path: str,
    student_path: str,
    prompt_key: str,
    teacher: Dict[Any, dict],
    t_order: List[Any],
    t_line: Dict[Any, int],
    student: Dict[Any, dict],
    s_line: Dict[Any, int],
) -> None:
    """One error listing the ids whose prompts differ between the two files."""
    mismatched = [
        f"id {rid!r}: --teacher_responses line {t_line[rid]} and --student_responses line {s_line[rid]}"
        for rid in t_order
        if rid in student and teacher[rid][prompt_key] != student[rid][prompt_key]
    ]
    if mismatched:
        raise_problems(
            [f"{m}: different prompts under {prompt_key!r}" for m in mismatched],
            f"{teacher_path} vs {student_path}",
            len(t_order),
        )


def _join(
    teacher: Dict[Any, dict], t_order: List[Any], student: Dict[Any, dict], prompt_key: str, keep_unfinished: bool
) -> _Joined:
    """Join the two files by id in teacher order into the SFT and preference rows, counting every drop."""
    counts = {
        "teacher_rows": len(teacher),
        "student_rows": len(student),
        "only_teacher": 0,
        "only_student": sum(1 for rid in student if rid not in teacher),
        "joined": 0,
        "teacher_empty": 0,
        "teacher_truncated": 0,
        "teacher_truncated_kept": 0,
        "identical": 0,
        "student_empty": 0,
        "student_truncated_kept": 0,
    }
    preference: List[dict] = []
    sft: List[dict] = []
    for rid in t_order:
        if rid not in student:
            counts["only_teacher"] += 1
            continue
        counts["joined"] += 1
        t, s = teacher[rid], student[rid]
        t_cut = t.get("finish_reason") == "length"
        dropped = _teacher_drop(t["response"], t_cut, keep_unfinished)
        if dropped:
            counts[dropped] += 1
            continue
        counts["teacher_truncated_kept"] += int(t_cut)
        sft.append(_sft_row(rid, t, prompt_key, t_cut))
        dropped = _student_drop(t["response"], s["response"])
        if dropped:
            counts[dropped] += 1
            continue
        s_cut = s.get("finish_reason") == "length"
        counts["student_truncated_kept"] += int(s_cut)
        preference.append(_preference_row(rid, t, s, prompt_key, (t_cut, s_cut) if keep_unfinished else None))
    return _Joined(counts, preference, sft)


def _teacher_drop(chosen: str, t_cut: bool, keep_unfinished: bool) -> Optional[str]:
    """The count a teacher response is dropped from both sets under (empty, or truncated), else None."""
    if not chosen.strip():
        return "teacher_empty"
    if t_cut and not keep_unfinished:
        return "teacher_truncated"
    return None


def _student_drop(chosen: str, rejected: str) -> Optional[str]:
    """The count a pair is dropped from the preference set under (identical, or empty student response), else None."""
    if chosen.strip() == rejected.strip():
        return "identical"
    if not rejected.strip():
        return "student_empty"
    return None


def _sft_row(rid: Any, t: dict, prompt_key: str, t_cut: bool) -> dict:
    """The SFT row of one teacher response (marked unfinished when truncated)."""
    return {
        ID_KEY: rid,
        SFT_SET_FLAGS["data.input_key"]: t[prompt_key],
        SFT_SET_FLAGS["data.output_key"]: t["response"],
        **({"output_unfinished": True} if t_cut else {}),
    }


def _preference_row(rid: Any, t: dict, s: dict, prompt_key: str, unfinished: Optional[Tuple[bool, bool]]) -> dict:
    """The preference row of one pair; ``unfinished`` (teacher, student truncated) marks them (--keep_unfinished)."""
    row = {
        ID_KEY: rid,
        PREFERENCE_SET_FLAGS["data.prompt_key"]: t[prompt_key],
        PREFERENCE_SET_FLAGS["data.chosen_key"]: t["response"],
        PREFERENCE_SET_FLAGS["data.rejected_key"]: s["response"],
    }
    if unfinished is not None:
        row.update({"chosen_unfinished": unfinished[0], "rejected_unfinished": unfinished[1]})
    return row


def _policy(keep_unfinished: bool) -> str:
    """The report's one-sentence statement of what was dropped and kept."""
    return (
        "ids in one file only: dropped; teacher response empty: dropped from both sets; teacher response "
        "truncated (finish_reason length): "
        + (
            "kept, marked unfinished (trained without the end-of-turn token), as are truncated student responses"
            if keep_unfinished
            else "dropped from both sets"
        )
        + "; identical responses (after strip) or empty student response: dropped from the preference "
        "set only"
    )


def _log_summary(log, joined: _Joined, output_dir: str) -> None:
    """Log one line: the joined ids, every drop, and the rows of each set."""
    counts = joined.counts
    log(
        f"build_sets: {counts['joined']} ids in both files ({counts['only_teacher']} only in --teacher_responses, "
        f"{counts['only_student']} only in --student_responses); dropped from both sets: {counts['teacher_empty']} empty and "
        f"{counts['teacher_truncated']} truncated teacher responses ({counts['teacher_truncated_kept']} truncated "
        f"ones kept as unfinished); dropped from the preference set only: "
        f"{counts['identical']} identical and {counts['student_empty']} empty student responses "
        f"({counts['student_truncated_kept']} truncated student responses kept) -> "
        f"{len(joined.preference)} preference rows, {len(joined.sft)} SFT rows in {output_dir}"
    )


def _check_preference_not_empty(joined: _Joined, sft_path: str) -> None:
    """A DataError when no pair is left for the preference set (the SFT set and the report are written)."""
    if joined.preference:
        return
    counts = joined.counts
    raise DataError(
        f"build_sets: the preference set is empty ({counts['joined']} ids joined; "
        f"{counts['teacher_empty']} empty and {counts['teacher_truncated']} truncated teacher "
        f"responses, {counts['identical']} identical pairs, {counts['student_empty']} empty student "
        f"responses); {sft_path} and {REPORT_FILE} were written"
    )
