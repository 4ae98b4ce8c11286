"""JSON lines files: whole-file atomic writes, durable appends, reading with line numbers, and
the repair of a last line torn by a killed writer."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, List, Sequence, Tuple

from openrlhf.utils.atomic import atomic_write
from openrlhf.utils.errors import DataError


def write_jsonl_atomic(path: str, rows: Iterable[dict]) -> int:
    """Write ``rows`` as JSON lines to ``path`` atomically; returns the count."""
    n = 0
    with atomic_write(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float replaced by None: strict JSON (``null``), which every
    JSON reader takes (Python's json writes a bare ``NaN`` that is not JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str, obj: Any) -> None:
    """``obj`` as indented strict JSON (NaN / infinities as ``null``), written atomically."""
    with atomic_write(path) as f:
        json.dump(json_safe(obj), f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")


def append_jsonl(path: str, rows: Sequence[dict]) -> None:
    """Append rows and make them durable (flush + fsync) before returning."""
    if not rows:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def repair_torn_tail(path: str) -> str:
    """Make an appended JSON lines file end at a line boundary before more is appended.

    A writer killed mid-line leaves a last line without its newline. When that line is a
    whole JSON object (only the newline was lost) the newline is added; otherwise the torn
    line is cut off. Returns ``""`` (nothing to do, or no file), ``"newline"`` or ``"dropped"``.
    """
    if not os.path.isfile(path):
        return ""
    with open(path, "rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return ""
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    try:
        whole = isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        whole = False
    with open(path, "r+b") as f:
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    return "newline" if whole else "dropped"


def read_jsonl(path: str, what: str) -> List[Tuple[int, dict]]:
    """``[(line number, row)]`` of a JSON lines file; DataError naming the line otherwise."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{what} {path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path}: not UTF-8 text ({e})") from None
    out: List[Tuple[int, dict]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{what} {path}: line {n} is not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{what} {path}: line {n} is a JSON {type(obj).__name__}, expected an object")
        out.append((n, obj))
    return out
