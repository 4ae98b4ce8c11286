"""Read the rows of a dataset into plain Python dicts.

Supported sources (``load_rows``):

- a ``.json`` file: a list of objects, or JSON lines;
- a ``.jsonl`` file: one object per line (blank lines are skipped);
- a ``.parquet`` file;
- a ``.csv`` file or an ``.arrow`` file (Arrow streaming format, as ``save_to_disk`` writes its
  shards; a stream without its end-of-stream marker is refused as truncated), read with datasets'
  own builders (what OpenRLHF does);
- a folder written by ``datasets.Dataset.save_to_disk`` or
  ``datasets.DatasetDict.save_to_disk`` (the split is picked from the latter);
- a folder of ``.jsonl`` / ``.json`` / ``.parquet`` files. When file names (or a
  sub-folder name) carry split names (``train.jsonl``, ``test-00000.parquet``,
  ``train/``), only the requested split's files are read; otherwise every file is
  read, whatever the split asked for;
- any other name is handed to ``datasets.load_dataset(name, split=split)``;
- ``name@data_dir`` (OpenRLHF's form): only the files under ``data_dir`` of a hub dataset
  (``load_dataset(name, data_dir=data_dir)``) or of a local folder.

Several sources separated by commas (``--data.dataset a.jsonl,b.jsonl``) are read one by one
(``max_samples`` rows from each) and joined, or mixed by ``--data.dataset_probs``
(:func:`mix_rows`), then cut to ``max_samples`` in all (OpenRLHF's caps); each row remembers its file and row number for messages (:class:`Rows`).

Every problem is a :class:`DataError` naming the flag, the file and the row/line.
Row numbers in messages count from 1.
"""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any, List, Optional, Sequence

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from openrlhf.utils.errors import DataError
from openrlhf.utils.paths import split_sources

DATA_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
_KNOWN_SPLITS = ("train", "test", "validation", "valid", "val", "dev", "eval")


def _prefix(what: str, path: str) -> str:
    return f"{what} {path}" if what else path


def _take(rows: List[Any], max_samples: int) -> List[Any]:
    if max_samples is not None and max_samples >= 0:
        return rows[:max_samples]
    return rows


# --------------------------------------------------------------------------- files


def _read_jsonl_text(text: str, path: str, what: str, max_samples: int) -> List[dict]:
    rows: List[dict] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if max_samples is not None and 0 <= max_samples <= len(rows):
            break
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{_prefix(what, path)}: line {lineno} is not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{_prefix(what, path)}: line {lineno} is a JSON {type(obj).__name__}, expected an object")
        rows.append(obj)
    return rows


def _read_json_file(path: str, what: str, max_samples: int) -> List[dict]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{_prefix(what, path)}: not UTF-8 text ({e})") from None
    if not text.strip():
        raise DataError(f"{_prefix(what, path)}: the file is empty")
    if path.endswith(".jsonl"):
        return _read_jsonl_text(text, path, what, max_samples)
    # .json: a whole JSON document (a list of objects), else JSON lines.
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl_text(text, path, what, max_samples)
    if isinstance(doc, dict):
        if any(isinstance(v, list) and v and isinstance(v[0], dict) for v in doc.values()):
            raise DataError(
                f"{_prefix(what, path)}: expected a list of objects (or JSON lines), got one object "
                f"with keys {sorted(doc)[:10]}; put the rows in a top-level list"
            )
        doc = [doc]
    if not isinstance(doc, list):
        raise DataError(
            f"{_prefix(what, path)}: expected a list of objects (or JSON lines), got a JSON {type(doc).__name__}"
        )
    doc = _take(doc, max_samples)
    for i, obj in enumerate(doc):
        if not isinstance(obj, dict):
            raise DataError(f"{_prefix(what, path)}: row {i + 1} is a JSON {type(obj).__name__}, expected an object")
    return doc


def _read_parquet_file(path: str, what: str, max_samples: int) -> List[dict]:
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for broken files
        raise DataError(f"{_prefix(what, path)}: cannot read parquet file ({e})") from None
    if max_samples is not None and max_samples >= 0:
        table = table.slice(0, max_samples)
    return table.to_pylist()


def _read_file(path: str, what: str, max_samples: int) -> List[dict]:
    low = path.lower()
    if low.endswith(".jsonl") or low.endswith(".json"):
        return _read_json_file(path, what, max_samples)
    if low.endswith(".parquet"):
        return _read_parquet_file(path, what, max_samples)
    if low.endswith((".csv", ".arrow")):
        return _read_with_builder(low.rsplit(".", 1)[1], path, what, max_samples)
    raise DataError(
        f"{_prefix(what, path)}: unsupported file type; use one of {', '.join(DATA_EXTENSIONS)}, "
        "a folder written by datasets' save_to_disk, or a folder of such files"
    )


_ARROW_FILE_MAGIC = b"ARROW1"
_ARROW_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _check_arrow_stream(path: str, what: str) -> None:
    """An Arrow IPC stream must end with its end-of-stream marker: one cut at a message boundary reads
    as fewer rows without any error, so the messages are walked to the marker. (The IPC file format,
    which starts with ``ARROW1``, has a footer that its reader checks.)"""
    try:
        with pa.memory_map(path) as f:
            size = f.size()
            if f.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC:
                return
            f.seek(0)
            while True:
                pos = f.tell()
                head = f.read(len(_ARROW_END_OF_STREAM))
                if head == _ARROW_END_OF_STREAM:
                    return
                if len(head) < len(_ARROW_END_OF_STREAM):
                    break
                f.seek(pos)
                pa.ipc.read_message(f)
    except Exception as e:  # a message cut in its middle
        raise DataError(
            f"{_prefix(what, path)}: the Arrow stream is truncated or damaged ({type(e).__name__}: {e})"
        ) from None
    raise DataError(
        f"{_prefix(what, path)}: the Arrow stream is truncated: it ends at byte {size} without its "
        "end-of-stream marker (rows after that point are missing)"
    )


def _read_with_builder(kind: str, path: str, what: str, max_samples: int) -> List[dict]:
    """A ``.csv`` / ``.arrow`` file through datasets' ``csv`` / ``arrow`` builder (OpenRLHF's reading:
    the same column types, e.g. an empty CSV cell is None)."""
    if kind == "arrow":
        _check_arrow_stream(path, what)
    try:
        ds = datasets.load_dataset(kind, data_files=path, split="train")
    except Exception as e:  # the builders raise several types for broken files
        if kind == "csv" and "corresponds to no data" in str(e):  # a header and nothing else
            raise DataError(f"{_prefix(what, path)}: no rows (the CSV file holds its header only)") from None
        raise DataError(f"{_prefix(what, path)}: cannot read the {kind} file ({type(e).__name__}: {e})") from None
    if kind == "csv" and len(ds.column_names) == 1:
        other = [sep for sep in (";", "\t", "|") if sep in ds.column_names[0]]
        if other:
            raise DataError(
                f"{_prefix(what, path)}: one column named {ds.column_names[0]!r}: the file looks separated by "
                f"{other[0]!r}; a .csv source must be comma-separated (or use .jsonl / .parquet)"
            )
    return _arrow_to_rows(ds, max_samples)


# --------------------------------------------------------------------------- folders


def _arrow_to_rows(ds, max_samples: int) -> List[dict]:
    if max_samples is not None and 0 <= max_samples < len(ds):
        ds = ds.select(range(max_samples))
    return ds.to_list()


def _read_saved_dataset(path: str, split: str, what: str, max_samples: int) -> List[dict]:
    try:
        if os.path.exists(os.path.join(path, "dataset_dict.json")):
            dd = datasets.DatasetDict.load_from_disk(path)
            if split not in dd:
                raise DataError(
                    f"{_prefix(what, path)}: split {split!r} not found; available splits: {sorted(dd.keys())}"
                )
            return _arrow_to_rows(dd[split], max_samples)
        ds = datasets.Dataset.load_from_disk(path)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{_prefix(what, path)}: cannot load the saved dataset ({e})") from None
    return _arrow_to_rows(ds, max_samples)


def _split_of(name: str) -> Optional[str]:
    """The split a data file name announces (``train.jsonl``, ``test-0000.parquet``), if any."""
    stem = os.path.basename(name)
    for ext in DATA_EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    m = re.match(r"^([A-Za-z]+)", stem)
    if m and m.group(1).lower() in _KNOWN_SPLITS:
        return m.group(1).lower()
    return None


def _read_folder(path: str, split: str, what: str, max_samples: int) -> List[dict]:
    if os.path.exists(os.path.join(path, "dataset_dict.json")) or os.path.exists(os.path.join(path, "state.json")):
        return _read_saved_dataset(path, split, what, max_samples)

    # A split sub-folder (folder/train/...) wins.
    sub = os.path.join(path, split)
    if split and os.path.isdir(sub):
        return _read_folder(sub, "", what, max_samples)

    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            if n.lower().endswith(DATA_EXTENSIONS) and not n.startswith("."):
                files.append(os.path.join(root, n))
    files.sort()
    if not files:
        raise DataError(
            f"{_prefix(what, path)}: the folder holds no {', '.join(DATA_EXTENSIONS)} files "
            "and is not a datasets save_to_disk folder"
        )
    by_split = {f: _split_of(f) for f in files}
    named = sorted({s for s in by_split.values() if s})
    if split and named:
        chosen = [f for f, s in by_split.items() if s == split.lower()]
        if not chosen:
            raise DataError(f"{_prefix(what, path)}: split {split!r} not found; available splits: {named}")
        files = chosen

    rows: List[dict] = []
    for f in files:
        left = -1 if max_samples is None or max_samples < 0 else max_samples - len(rows)
        if left == 0:
            break
        rows.extend(_read_file(f, what, left))
    return rows


# --------------------------------------------------------------------------- hub


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~", "\\"))
        or source.count("/") > 1
        or source.lower().endswith(DATA_EXTENSIONS)
    )


_NOT_LOCAL = "no such local file or folder, and loading it as a hub dataset with datasets.load_dataset failed"


def _read_hub(source: str, split: str, what: str, max_samples: int, data_dir: Optional[str] = None) -> List[dict]:
    try:
        ds = datasets.load_dataset(source, split=split, **({"data_dir": data_dir} if data_dir else {}))
    except ValueError as e:
        msg = str(e)
        if "split" in msg.lower():
            raise DataError(f"{what} {source}: split {split!r} not found ({msg})") from None
        raise DataError(f"{what} {source}: {_NOT_LOCAL} ({msg})") from None
    except Exception as e:
        raise DataError(f"{what} {source}: {_NOT_LOCAL} ({type(e).__name__}: {e})") from None
    return _arrow_to_rows(ds, max_samples)


# --------------------------------------------------------------------------- entry


def load_rows(
    source: str,
    split: str = "train",
    max_samples: int = -1,
    what: str = "--data.dataset",
) -> List[dict]:
    """Rows of ``source`` as a list of dicts (the first ``max_samples`` when >= 0).

    ``what`` is the flag that named the source; it starts every error message.
    Raises :class:`DataError` for a missing file, zero rows, a malformed line, a row
    that is not an object, or a split that does not exist.
    """
    if not source:
        raise DataError(f"{what} is empty: give a .json/.jsonl/.parquet file, a folder or a hub dataset name")
    path = os.path.expanduser(source)
    if "@" in source and not os.path.exists(path):  # OpenRLHF's name@data_dir
        name, data_dir = (part.strip() for part in source.split("@", 1))
        if not name or not data_dir:
            raise DataError(f"{what} {source}: expected name@data_dir (a hub dataset or folder, @ a folder in it)")
        if os.path.isdir(os.path.expanduser(name)):
            sub = os.path.join(os.path.expanduser(name), data_dir)
            if not os.path.isdir(sub):
                raise DataError(f"{what} {source}: {data_dir!r} is not a folder in {name}")
            rows = _read_folder(sub, split, what, max_samples)
        elif _looks_like_path(name):
            raise DataError(f"{what} {source}: folder {name} not found")
        else:
            rows = _read_hub(name, split, what, max_samples, data_dir=data_dir)
    elif os.path.isfile(path):
        rows = _read_file(path, what, max_samples)
    elif os.path.isdir(path):
        rows = _read_folder(path, split, what, max_samples)
    elif _looks_like_path(source):
        raise DataError(f"{what} {source}: file not found")
    else:
        rows = _read_hub(source, split, what, max_samples)

    if not rows:
        extra = " (max_samples is 0)" if max_samples == 0 else ""
        raise DataError(f"{_prefix(what, source)}: no rows{extra}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise DataError(f"{_prefix(what, source)}: row {i + 1} is a {type(r).__name__}, expected an object")
    return rows


# --------------------------------------------------------------------------- several sources


class Rows(list):
    """Loaded rows (a list of dicts) that know where each came from: ``origin(i)`` is
    ``"<file>, row <n>"`` (rows count from 1) for messages about row ``i``."""

    def __init__(self, rows: Sequence[dict], name: str, origins: Optional[Sequence[tuple]] = None):
        super().__init__(rows)
        self.name = name
        self._origins = list(origins) if origins is not None else None  # (source, row index) per row

    def origin(self, i: int) -> str:
        if self._origins is None:
            return f"{self.name}, row {i + 1}"
        source, j = self._origins[i]
        return f"{source}, row {j + 1}"


def mix_rows(parts: Sequence[Sequence[Any]], probs: Sequence[float], seed: int) -> List[tuple]:
    """(part, row) picks that interleave ``parts`` with probabilities ``probs`` until every part has been
    used up at least once (a part that runs out starts again from its first row: the smaller sources
    are oversampled). Deterministic for a seed."""
    rng = random.Random(seed)
    pos = [0] * len(parts)
    done = [len(p) == 0 for p in parts]
    picks: List[tuple] = []
    weights = [p if parts[k] else 0.0 for k, p in enumerate(probs)]
    while not all(done):
        k = rng.choices(range(len(parts)), weights=weights)[0]
        picks.append((k, pos[k]))
        pos[k] += 1
        if pos[k] == len(parts[k]):
            pos[k], done[k] = 0, True
    return picks


def load_sources(
    spec: str,
    split: str = "train",
    max_samples: int = -1,
    probs: Sequence[float] = (),
    seed: int = 42,
    what: str = "--data.dataset",
) -> Rows:
    """The rows of one or several comma-separated sources (:func:`load_rows` for each, ``max_samples``
    rows from each): joined in order, or mixed by ``probs`` (:func:`mix_rows`, one probability per
    source); either way then cut to ``max_samples`` rows in all (OpenRLHF's caps)."""
    sources = split_sources(spec)
    if len(sources) <= 1:
        return Rows(load_rows(spec.strip(), split=split, max_samples=max_samples, what=what), spec.strip())
    if probs and len(probs) != len(sources):
        raise DataError(f"{what}: {len(sources)} sources but --data.dataset_probs gives {len(probs)} probabilities")
    parts = [load_rows(s, split=split, max_samples=max_samples, what=what) for s in sources]
    if probs:
        picks = mix_rows(parts, probs, seed)
    else:
        picks = [(k, j) for k, part in enumerate(parts) for j in range(len(part))]
    if max_samples is not None and max_samples >= 0:
        picks = picks[:max_samples]
    return Rows([parts[k][j] for k, j in picks], spec, [(sources[k], j) for k, j in picks])
