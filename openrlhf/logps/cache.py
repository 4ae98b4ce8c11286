"""Cached sequence log-probs of the teacher and the reference, stored as dataset columns.

``python -m openrlhf.cli.score_logps`` adds, per row,
``teacher_chosen_logp`` / ``teacher_rejected_logp`` / ``teacher_logp_fingerprint`` and
``ref_chosen_logp`` / ``ref_rejected_logp`` / ``ref_logp_fingerprint``. A row fingerprint
hashes the model files, how the pair was tokenised, the row's own prompt / chosen /
rejected values and the two cached numbers themselves, so a trainer can tell, row by row,
whether a cached number belongs to the model and the text it is about to train with, and
whether it was edited.

The model part of a fingerprint hashes ``config.json``, the tokenizer files and every
weight file whole (SHA-256, streamed). ``score_logps`` keeps the weight digests it computed
in ``model_digests.json`` next to the scored file, keyed by the file's real path, size,
modification and change times and inode; training reuses a digest whose file still has
that identity, so a 15 GB teacher is hashed once, and any write to a weight file (which
moves its change time, even when the modification time is put back) is hashed again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from huggingface_hub import snapshot_download

from openrlhf.utils.errors import DataError
from openrlhf.utils.jsonl import write_json_atomic

# ref, teacher (the first teacher), teacher_2, teacher_3, ... (see models.loss.teacher_name)
_KIND = re.compile(r"^(ref|teacher(_[2-9]|_[1-9][0-9]+)?)$")
DIGESTS_FILE = "model_digests.json"


class DigestCache:
    """SHA-256 digests of (weight) files by real path and file identity; see the module doc.
    ``path`` None: nothing is remembered."""

    def __init__(self, path: Optional[str] = None):
        self.path = path
        self.entries: Dict[str, dict] = {}
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                self.entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self.entries = {}  # unreadable: digests are computed again

    @staticmethod
    def _identity(path: str) -> list:
        st = os.stat(path)
        # ctime changes on every write and every utime(), so a restored mtime cannot fool it.
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def digest(self, path: str) -> str:
        key = os.path.realpath(path)
        ident = self._identity(key)
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("identity") == ident and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        h = hashlib.sha256()
        with open(key, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        self.entries[key] = {"identity": ident, "sha256": h.hexdigest()}
        return self.entries[key]["sha256"]

    def save(self) -> None:
        if self.path:
            write_json_atomic(self.path, self.entries)


def scored_folder(source: str) -> str:
    """The folder of a scored data file (or the scored data folder itself): where score_logps keeps what its
    cache is checked with (the weight digests, a served model's probe)."""
    return source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))


def digests_near(source: str) -> DigestCache:
    """The digest cache kept next to a scored data file (or in a scored data folder)."""
    return DigestCache(os.path.join(scored_folder(source), DIGESTS_FILE))


def columns(kind: str) -> Tuple[str, str, str]:
    """(chosen column, rejected column, fingerprint column) of ``kind``."""
    if not _KIND.match(kind):
        raise ValueError(f"unknown cache kind {kind!r}")
    return f"{kind}_chosen_logp", f"{kind}_rejected_logp", f"{kind}_logp_fingerprint"


def _local_model_dir(path: str, what: str) -> str:
    if os.path.isdir(path):
        return path
    try:
        return snapshot_download(path, local_files_only=True)
    except Exception as e:  # not downloaded / not a hub name
        raise DataError(f"{what}: {path!r} is neither a local folder nor a model in the local HF cache ({e})") from None


def model_fingerprint(
    path: str, what: str = "--teacher.model_name_or_path", digests: Optional[DigestCache] = None
) -> str:
    """A hash of a model folder's config, tokenizer files and whole weight files (see module doc)."""
    folder = _local_model_dir(path, what)
    h = hashlib.sha256()
    names = sorted(
        os.path.basename(p)
        for p in glob.glob(os.path.join(folder, "*"))
        if os.path.isfile(p) and (p.endswith((".json", ".safetensors", ".bin", ".model", ".jinja", ".txt")))
    )
    weights = [n for n in names if n.endswith((".safetensors", ".bin"))]
    if not weights:
        raise DataError(f"{what}: no weight files (*.safetensors / *.bin) in {folder}")
    digests = digests if digests is not None else DigestCache()
    for n in names:
        p = os.path.join(folder, n)
        h.update(f"{n}\0{os.path.getsize(p)}\0".encode())
        h.update(digests.digest(p).encode())
    return h.hexdigest()


def tokenization_fingerprint(renderer, max_len: Optional[int]) -> str:
    """How pairs become tokens: template switch, templates actually used, special tokens, length cap."""
    tok = renderer.tokenizer
    spec = {
        "apply_chat_template": renderer.apply_chat_template,
        "input_template": renderer.input_template,
        "chat_template": (renderer.chat_template or getattr(tok, "chat_template", None))
        if renderer.apply_chat_template
        else None,
        "vocab": len(tok),
        "eos": tok.eos_token,
        "bos": tok.bos_token,
        "max_len": max_len,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def setting_fingerprint(model_fp: str, tokenization_fp: str) -> str:
    return hashlib.sha256(f"{model_fp}:{tokenization_fp}".encode()).hexdigest()


def row_fingerprint(setting_fp: str, row: dict, keys: Sequence[str], values: Tuple[float, float]) -> str:
    """Hash of the setting, the row's text under ``keys`` and the two cached numbers (exact reprs)."""
    content = json.dumps([row.get(k) for k in keys], sort_keys=True, ensure_ascii=False)
    numbers = f"{float(values[0])!r}\0{float(values[1])!r}"
    return hashlib.sha256(f"{setting_fp}\0{content}\0{numbers}".encode()).hexdigest()[:16]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def has_cache(rows: Sequence[dict], kind: str) -> bool:
    c, r, _ = columns(kind)
    return any(c in row or r in row for row in rows)


def load_cached(
    rows: Sequence[dict], kind: str, setting_fp: str, keys: Sequence[str], source: str, needed: Sequence[int], flag: str
) -> Dict[int, Tuple[float, float]]:
    """Check and read the ``kind`` columns for the rows in ``needed`` (original indices): {row index:
    (chosen, rejected)}.

    Every needed row must carry both numbers and a fingerprint equal to the one computed
    now from ``setting_fp`` and the row's own values; otherwise one clear error lists the
    first offending rows.
    """
    c, r, fpc = columns(kind)
    problems: List[str] = []
    values: Dict[int, Tuple[float, float]] = {}
    for i in needed:
        row = rows[i]
        if row.get(c) is None or row.get(r) is None or row.get(fpc) is None:
            problems.append(f"row {i + 1}: no cached {kind} log-probs ({c}, {r}, {fpc})")
            continue
        bad = [k for k in (c, r) if not _is_number(row[k])]
        if bad:
            problems.append(f"row {i + 1}: {', '.join(f'{k} is {row[k]!r}' for k in bad)}, not a finite number")
            continue
        if row[fpc] != row_fingerprint(setting_fp, row, keys, (row[c], row[r])):
            problems.append(
                f"row {i + 1}: {fpc} does not match (another model, tokenisation or row text, or an edited number)"
            )
            continue
        values[i] = (float(row[c]), float(row[r]))
    if problems:
        shown = "; ".join(problems[:5])
        raise DataError(
            f"{source}: cached {kind} log-probs do not belong to this {flag} / tokenisation / row text "
            f"({len(problems)} of {len(needed)} rows): {shown}. Rerun python -m openrlhf.cli.score_logps "
            f"with the same model and data flags, or remove the {kind}_* columns to compute them online."
        )
    return values
