"""Generated responses: trimming at the stop token, and the resumable JSON lines file.

Output rows (one per prompt)::

    {"id": ..., "<prompt_key>": <prompt as given>, "response": text,
     "model": <model path>, "finish_reason": "stop" | "length", "response_tokens": int}

``response`` is the decoded text before the stop token, special tokens stripped.
``response_tokens`` counts every generated token, the stop token included.
``finish_reason`` is ``stop`` when a stop token (EOS / end of turn) was generated and
``length`` when ``max_new_tokens`` ran out first.

The file is written batch by batch (append + flush + fsync), so a killed run loses
at most the batch in flight. :func:`load_finished` reads it back for a rerun: a torn
last line (no newline, not valid JSON: the write a kill interrupted) is dropped and
the file rewritten without it; any other bad line is an error.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from openrlhf.datasets.loading import load_rows
from openrlhf.utils.disk import disk_full_is_one_line
from openrlhf.utils.errors import DataError
from openrlhf.utils.jsonl import append_jsonl, write_jsonl_atomic

ID_KEY = "id"
RESPONSE_KEY = "response"


def trim_response(
    token_ids: Sequence[int],
    stop_ids: Iterable[int],
    backend_finish: Optional[str] = None,
) -> Tuple[List[int], int, str]:
    """``(content ids, response_tokens, finish_reason)`` of one generated sequence.

    Content stops before the first stop id; everything after it (padding of a
    batched generate) is dropped. Without a stop id the sequence ran to its length
    limit, unless the backend itself says it stopped (``backend_finish="stop"``).
    """
    stops = set(stop_ids)
    ids = [int(t) for t in token_ids]
    for pos, t in enumerate(ids):
        if t in stops:
            return ids[:pos], pos + 1, "stop"
    return ids, len(ids), "stop" if backend_finish == "stop" else "length"


def same_model(a: Any, b: str) -> bool:
    """Same model name, or two spellings of the same local folder."""
    if a == b:
        return True
    if not isinstance(a, str):
        return False
    pa, pb = os.path.expanduser(a), os.path.expanduser(b)
    return os.path.exists(pa) and os.path.exists(pb) and os.path.realpath(pa) == os.path.realpath(pb)


class ResultsFile:
    """The output JSON lines file of one generation run."""

    def __init__(self, path: str, what: str = "--generate.output_path"):
        self.path = path
        self.what = what
        self.torn_line_dropped = False

    def load_finished(self, model: str) -> Dict[Any, dict]:
        """``{id: row}`` of the rows already written (repairing a torn last line).

        Raises DataError for a malformed line before the last, a row without an id or
        response, an id written twice, or rows of another model.
        """
        if not os.path.exists(self.path):
            return {}
        with open(self.path, "rb") as f:
            data = f.read()
        if not data:
            return {}
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        rows: List[Tuple[int, dict]] = []
        for n, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            rows.append((n, self._parse(raw, n)))
        if tail.strip():
            try:
                obj = json.loads(tail.decode("utf-8"))
                ok = isinstance(obj, dict) and ID_KEY in obj and RESPONSE_KEY in obj
            except (UnicodeDecodeError, json.JSONDecodeError):
                ok = False
            if ok:  # complete row, only the newline was lost
                rows.append((len(lines) + 1, obj))
            else:
                self.torn_line_dropped = True
            write_jsonl_atomic(self.path, [r for _, r in rows])
        finished: Dict[Any, dict] = {}
        line_of: Dict[Any, int] = {}
        for n, row in rows:
            for key in (ID_KEY, RESPONSE_KEY):
                if key not in row:
                    raise DataError(
                        f"{self.what} {self.path}: line {n} has no {key!r} key; it is not an output of this generator"
                    )
            rid = row[ID_KEY]
            if isinstance(rid, list) or isinstance(rid, dict):
                raise DataError(f"{self.what} {self.path}: line {n}: the id is a {type(rid).__name__}")
            if rid in finished:
                raise DataError(f"{self.what} {self.path}: id {rid!r} is written twice (lines {line_of[rid]} and {n})")
            if not same_model(row.get("model", model), model):
                raise DataError(
                    f"{self.what} {self.path}: line {n} holds a response of model {row.get('model')!r}, not "
                    f"{model!r}; give another output path for this model"
                )
            finished[rid] = row
            line_of[rid] = n
        return finished

    def _parse(self, raw: bytes, n: int) -> dict:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(
                f"{self.what} {self.path}: line {n} is not valid JSON ({e}); only a torn LAST line "
                "(from a killed run) is repaired automatically"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{self.what} {self.path}: line {n} is a JSON {type(obj).__name__}, expected an object")
        return obj

    def append(self, rows: Sequence[dict]) -> None:
        """Append rows and make them durable (flush + fsync) before returning; a full disk is one line (the rows
        written before are kept: the same command goes on from them)."""
        kept = "the answers written before are kept: free space and run the same command to go on"
        need = lambda: sum(len(json.dumps(r, ensure_ascii=False).encode()) + 1 for r in rows)  # noqa: E731
        with disk_full_is_one_line(f"{self.what} ({len(rows)} answers)", self.path, need, kept):
            append_jsonl(self.path, rows)

    def rewrite(self, rows: Sequence[dict]) -> None:
        write_jsonl_atomic(self.path, rows)


# --------------------------------------------------------------------------- reading response files


def read_responses(path: str, what: str) -> Dict[str, dict]:
    """Rows of a response file keyed by ``str(id)``; errors name the file and row."""
    rows = load_rows(path, what=what)
    out: Dict[str, dict] = {}
    for i, row in enumerate(rows):
        for key in ("id", "prompt", "response"):
            if key not in row:
                raise DataError(f"{what} {path}: row {i + 1} has no {key!r} key (keys: {sorted(row)})")
        if row["response"] is None:
            raise DataError(f"{what} {path}: row {i + 1} (id {row['id']!r}): response is null")
        rid = str(row["id"])
        if rid in out:
            raise DataError(f"{what} {path}: id {row['id']!r} appears twice (rows {out[rid]['_row']} and {i + 1})")
        out[rid] = dict(row, _row=i + 1)
    return out


def check_same_ids(teacher: Dict[str, dict], cand: Dict[str, dict], label: str, path: str) -> None:
    missing = [i for i in teacher if i not in cand]
    extra = [i for i in cand if i not in teacher]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the teacher's {len(teacher)} ids are missing (e.g. {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} ids are not in the teacher's responses (e.g. {extra[:3]})")
        raise DataError(f"--candidate {label}={path}: " + "; ".join(parts))
    for rid, row in cand.items():
        if row["prompt"] != teacher[rid]["prompt"]:
            raise DataError(
                f"--candidate {label}={path}: row {row['_row']} (id {row['id']!r}) has another prompt "
                "than the teacher's row with that id"
            )
