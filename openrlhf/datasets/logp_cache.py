"""Cached sequence log-probs of the teacher and the reference, stored as dataset columns.

``python -m openrlhf.cli.score_logps`` adds, per row,
``teacher_chosen_logp`` / ``teacher_rejected_logp`` / ``teacher_logp_fingerprint`` and
``ref_chosen_logp`` / ``ref_rejected_logp`` / ``ref_logp_fingerprint``. A row fingerprint
hashes the model files, how the pair was tokenised and the row's own prompt / chosen /
rejected values, so a trainer can tell, row by row, whether a cached number belongs to
the model and the text it is about to train with.

The model part of a fingerprint reads ``config.json``, the tokenizer files and, of each
weight file, its name, size and first and last MiB (not the whole file: a 7B teacher would
take minutes to hash); a model folder edited in place with the same sizes and the same
head and tail bytes would go unnoticed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .loading import DataError

KINDS = ("teacher", "ref")
_EDGE = 1 << 20


def columns(kind: str) -> Tuple[str, str, str]:
    """(chosen column, rejected column, fingerprint column) of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}")
    return f"{kind}_chosen_logp", f"{kind}_rejected_logp", f"{kind}_logp_fingerprint"


def _local_model_dir(path: str, what: str) -> str:
    if os.path.isdir(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True)
    except Exception as e:  # not downloaded / not a hub name
        raise DataError(f"{what}: {path!r} is neither a local folder nor a model in the local HF cache ({e})") from None


def model_fingerprint(path: str, what: str = "--teacher.model_name_or_path") -> str:
    """A hash of a model folder's config, tokenizer files and weight files (see module doc)."""
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
    for n in names:
        p = os.path.join(folder, n)
        size = os.path.getsize(p)
        h.update(f"{n}\0{size}\0".encode())
        with open(p, "rb") as f:
            if n in weights and size > 2 * _EDGE:
                h.update(f.read(_EDGE))
                f.seek(size - _EDGE)
                h.update(f.read(_EDGE))
            else:
                h.update(f.read())
    return h.hexdigest()


def tokenization_fingerprint(renderer, max_len: Optional[int]) -> str:
    """How pairs become tokens: template switch, templates actually used, special tokens, length cap."""
    tok = renderer.tokenizer
    spec = {
        "apply_chat_template": renderer.apply_chat_template,
        "input_template": renderer.input_template,
        "chat_template": (renderer.chat_template or getattr(tok, "chat_template", None)) if renderer.apply_chat_template else None,
        "vocab": len(tok),
        "eos": tok.eos_token,
        "bos": tok.bos_token,
        "max_len": max_len,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def setting_fingerprint(model_fp: str, tokenization_fp: str) -> str:
    return hashlib.sha256(f"{model_fp}:{tokenization_fp}".encode()).hexdigest()


def row_fingerprint(setting_fp: str, row: dict, keys: Sequence[str]) -> str:
    content = json.dumps([row.get(k) for k in keys], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(f"{setting_fp}\0{content}".encode()).hexdigest()[:16]


@dataclass
class CachedLogps:
    """Cached (chosen, rejected) log-probs of one kind, by original row index."""

    kind: str
    values: Dict[int, Tuple[float, float]]


def has_cache(rows: Sequence[dict], kind: str) -> bool:
    c, r, _ = columns(kind)
    return any(c in row or r in row for row in rows)


def load_cached(rows: Sequence[dict], kind: str, setting_fp: str, keys: Sequence[str], source: str,
                needed: Sequence[int], flag: str) -> CachedLogps:
    """Check and read the ``kind`` columns for the rows in ``needed`` (original indices).

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
        if row[fpc] != row_fingerprint(setting_fp, row, keys):
            problems.append(f"row {i + 1}: {fpc} does not match")
            continue
        values[i] = (float(row[c]), float(row[r]))
    if problems:
        shown = "; ".join(problems[:5])
        raise DataError(
            f"{source}: cached {kind} log-probs do not belong to this {flag} / tokenisation / row text "
            f"({len(problems)} of {len(needed)} rows): {shown}. Rerun python -m openrlhf.cli.score_logps "
            f"with the same model and data flags, or remove the {kind}_* columns to compute them online."
        )
    return CachedLogps(kind, values)


class WithCachedLogps:
    """A dataset view that adds the cached columns to each item (by its ``index``)."""

    def __init__(self, base, caches: Sequence[CachedLogps]):
        self.base = base
        self.caches = list(caches)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = self.base[i]
        for cache in self.caches:
            c, r, _ = columns(cache.kind)
            item[c], item[r] = cache.values[item["index"]]
        return item


def add_cached_to_batch(batch: dict, items: Sequence[dict]) -> dict:
    """Copy cached log-prob columns found in the items into the batch as float tensors [B]."""
    import torch

    for kind in KINDS:
        c, r, _ = columns(kind)
        if items and c in items[0]:
            batch[c] = torch.tensor([it[c] for it in items], dtype=torch.float32)
            batch[r] = torch.tensor([it[r] for it in items], dtype=torch.float32)
    return batch
