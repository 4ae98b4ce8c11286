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
from typing import Any, Dict, List, Tuple

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


def build_sets(
    teacher_path: str,
    student_path: str,
    output_dir: str,
    prompt_key: str = "prompt",
    log=print,
    keep_unfinished: bool = False,
) -> Dict[str, Any]:
    """Write the preference and SFT sets (see the module doc); returns the report."""
    problem = output_dir_problem(output_dir)
    if problem:
        raise DataError(f"--output_dir: {problem}")
    if os.path.realpath(teacher_path) == os.path.realpath(student_path):
        raise DataError(
            f"--teacher and --student are the same file ({teacher_path}): every pair would be the "
            "same response twice, leaving no preference to learn"
        )
    teacher, t_order, t_line = _index(teacher_path, "--teacher", prompt_key)
    student, _, s_line = _index(student_path, "--student", prompt_key)
    if not any(rid in student for rid in t_order):
        t_types = sorted({type(r).__name__ for r in t_order})
        s_types = sorted({type(r).__name__ for r in student})
        hint = (
            f"; the ids are of different types (--teacher: {', '.join(t_types)}, --student: "
            f"{', '.join(s_types)}), so 0 and '0' never match"
            if t_types != s_types
            else ""
        )
        raise DataError(
            f"--teacher {teacher_path} and --student {student_path} share no id "
            f"(e.g. {t_order[:3]} vs {list(student)[:3]}){hint}; generate both from the same prompt file"
        )

    mismatched = [
        f"id {rid!r}: --teacher line {t_line[rid]} and --student line {s_line[rid]}"
        for rid in t_order
        if rid in student and teacher[rid][prompt_key] != student[rid][prompt_key]
    ]
    if mismatched:
        raise_problems(
            [f"{m}: different prompts under {prompt_key!r}" for m in mismatched],
            f"{teacher_path} vs {student_path}",
            len(t_order),
        )

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
        chosen, rejected = t["response"], s["response"]
        if not chosen.strip():
            counts["teacher_empty"] += 1
            continue
        t_cut = t.get("finish_reason") == "length"
        if t_cut and not keep_unfinished:
            counts["teacher_truncated"] += 1
            continue
        counts["teacher_truncated_kept"] += int(t_cut)
        sft.append(
            {
                ID_KEY: rid,
                SFT_SET_FLAGS["data.input_key"]: t[prompt_key],
                SFT_SET_FLAGS["data.output_key"]: chosen,
                **({"output_unfinished": True} if t_cut else {}),
            }
        )
        if chosen.strip() == rejected.strip():
            counts["identical"] += 1
            continue
        if not rejected.strip():
            counts["student_empty"] += 1
            continue
        s_cut = s.get("finish_reason") == "length"
        counts["student_truncated_kept"] += int(s_cut)
        row = {
            ID_KEY: rid,
            PREFERENCE_SET_FLAGS["data.prompt_key"]: t[prompt_key],
            PREFERENCE_SET_FLAGS["data.chosen_key"]: chosen,
            PREFERENCE_SET_FLAGS["data.rejected_key"]: rejected,
        }
        if keep_unfinished:
            row.update({"chosen_unfinished": t_cut, "rejected_unfinished": s_cut})
        preference.append(row)

    os.makedirs(output_dir, exist_ok=True)
    pref_path = os.path.join(output_dir, PREFERENCE_FILE)
    sft_path = os.path.join(output_dir, SFT_FILE)
    write_jsonl_atomic(pref_path, preference)
    write_jsonl_atomic(sft_path, sft)
    report = {
        "teacher": os.path.abspath(teacher_path),
        "student": os.path.abspath(student_path),
        "teacher_model": next((teacher[r].get("model") for r in t_order), None),
        "student_model": next((r.get("model") for r in student.values()), None),
        **counts,
        "preference_rows": len(preference),
        "sft_rows": len(sft),
        "preference_path": os.path.abspath(pref_path),
        "sft_path": os.path.abspath(sft_path),
        "keep_unfinished": keep_unfinished,
        "policy": (
            "ids in one file only: dropped; teacher response empty: dropped from both sets; teacher response "
            "truncated (finish_reason length): "
            + (
                "kept, marked unfinished (trained without the end-of-turn token), as are truncated student responses"
                if keep_unfinished
                else "dropped from both sets"
            )
            + "; identical responses (after strip) or empty student response: dropped from the preference "
            "set only"
        ),
    }
    write_json_atomic(os.path.join(output_dir, REPORT_FILE), report)
    log(
        f"build_sets: {counts['joined']} ids in both files ({counts['only_teacher']} only in --teacher, "
        f"{counts['only_student']} only in --student); dropped from both sets: {counts['teacher_empty']} empty and "
        f"{counts['teacher_truncated']} truncated teacher responses ({counts['teacher_truncated_kept']} truncated "
        f"ones kept as unfinished); dropped from the preference set only: "
        f"{counts['identical']} identical and {counts['student_empty']} empty student responses "
        f"({counts['student_truncated_kept']} truncated student responses kept) -> "
        f"{len(preference)} preference rows, {len(sft)} SFT rows in {output_dir}"
    )
    if not preference:
        raise DataError(
            f"build_sets: the preference set is empty ({counts['joined']} ids joined; "
            f"{counts['teacher_empty']} empty and {counts['teacher_truncated']} truncated teacher "
            f"responses, {counts['identical']} identical pairs, {counts['student_empty']} empty student "
            f"responses); {sft_path} and {REPORT_FILE} were written"
        )
    return report
