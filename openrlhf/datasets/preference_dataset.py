"""Preference pairs (prompt, chosen, rejected) -> token ids for the policy.

Keys come from ``data.prompt_key`` / ``data.chosen_key`` / ``data.rejected_key``.
Values are strings or chat messages. ``chosen`` / ``rejected`` may be the answer
only (a string, or ``[{"role": "assistant", ...}]``) or the whole conversation
whose last turn is the answer; when the prompt key is empty or absent from a row,
the turns before the answer are the prompt, and chosen and rejected must then
agree on them. Without a prompt, two whole texts (Anthropic HH's ``"\n\nHuman: ...
\n\nAssistant: ..."``) are split where they stop sharing a prefix
(:func:`~openrlhf.datasets.templates.split_shared_prefix`).

Each item keeps the resolved ``prompt`` / ``chosen`` / ``rejected`` (strings or
messages) so a teacher can re-tokenize the same text with its own tokenizer and
chat template (:func:`openrlhf.datasets.templates.tokenize_pair`, or
:func:`pair_batch` for a whole batch).

Over-long rows: both prompt + chosen and prompt + rejected must fit ``data.max_len``.
A row whose prompt alone has ``>= max_len - 2`` tokens is dropped (OpenRLHF's rule); otherwise each
response is cut to ``max_len - prompt_len`` tokens (``chosen_truncated`` /
``rejected_truncated`` say so: the raw text kept for the teacher is NOT cut).
Rows with an empty (or whitespace-only) chosen or rejected response are dropped. ``stats`` counts
everything; ``report()`` summarises it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from .batch import PairBatch, Tokens
from .common import format_report, masks, pad_right, prompt_too_long, raise_problems, unfinished_flag, where
from .loading import DataError
from .templates import PromptRenderer, resolve_pair, response_text, same_turns, split_shared_prefix
from .tokenizer import pad_token_id

# The usual name of a prompt column: refused when --data.prompt_key is empty (it would be ignored).
PROMPT_COLUMN = "prompt"


class PreferenceDataset(Dataset):
    """Items: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (lists of int; the
    chosen/rejected ids are the response parts only), ``prompt``, ``chosen``,
    ``rejected`` (resolved raw values), ``index`` (original row index),
    ``chosen_truncated``, ``rejected_truncated`` (bool)."""

    def __init__(
        self,
        rows: Sequence[dict],
        tokenizer,
        data_cfg,
        source_name: str = "<rows>",
        *,
        model_path: Optional[str] = None,
        renderer: Optional[PromptRenderer] = None,
    ):
        self.source_name = source_name
        self.max_len = int(data_cfg.max_len)
        if self.max_len <= 0:
            raise DataError(f"--data.max_len must be positive, got {self.max_len}")
        self.renderer = renderer or PromptRenderer.from_data_config(tokenizer, data_cfg, model_path=model_path)
        keys = (data_cfg.prompt_key, data_cfg.chosen_key, data_cfg.rejected_key)

        resolved: List[Tuple[Any, Any, Any]] = []
        flags: List[Tuple[bool, bool]] = []  # (chosen unfinished, rejected unfinished)
        wheres: List[str] = []
        problems: List[str] = []
        for i, row in enumerate(rows):
            w = where(source_name, i, rows)
            try:
                resolved.append(self._resolve(row, *keys, w, self.renderer))
                flags.append((unfinished_flag(row, keys[1], w), unfinished_flag(row, keys[2], w)))
                wheres.append(w)
            except DataError as e:
                problems.append(str(e))
        raise_problems(problems, source_name, len(rows))

        n = len(resolved)
        pairs = [(p, c) for p, c, _ in resolved] + [(p, r) for p, _, r in resolved]
        tokenized = self.renderer.tokenize_many(pairs, wheres + wheres, [c for c, _ in flags] + [r for _, r in flags])

        self.stats: Dict[str, int] = dict(
            rows=len(rows),
            kept=0,
            dropped_prompt_too_long=0,
            dropped_empty_response=0,
            truncated_response=0,
            truncated_chosen=0,
            truncated_rejected=0,
        )
        self._items: List[Dict[str, Any]] = []
        self.rows_kept_indices: List[int] = []
        for i, (prompt, chosen, rejected) in enumerate(resolved):
            p_ids, c_ids = tokenized[i]
            p_ids_r, r_ids = tokenized[n + i]
            if p_ids != p_ids_r:  # pragma: no cover - same prompt text gives same ids
                raise DataError(f"{wheres[i]}: the prompt tokenizes differently with chosen and rejected")
            if not response_text(chosen).strip() or not response_text(rejected).strip():
                self.stats["dropped_empty_response"] += 1
                continue
            if prompt_too_long(len(p_ids), self.max_len):
                self.stats["dropped_prompt_too_long"] += 1
                continue
            budget = self.max_len - len(p_ids)
            c_cut, r_cut = len(c_ids) > budget, len(r_ids) > budget
            c_ids, r_ids = c_ids[:budget], r_ids[:budget]
            self.stats["truncated_chosen"] += int(c_cut)
            self.stats["truncated_rejected"] += int(r_cut)
            self.stats["truncated_response"] += int(c_cut or r_cut)
            self._items.append(
                dict(
                    prompt_ids=p_ids,
                    chosen_ids=c_ids,
                    rejected_ids=r_ids,
                    prompt=prompt,
                    chosen=chosen,
                    rejected=rejected,
                    index=i,
                    chosen_truncated=c_cut,
                    rejected_truncated=r_cut,
                    chosen_unfinished=flags[i][0],
                    rejected_unfinished=flags[i][1],
                )
            )
            self.rows_kept_indices.append(i)
        self.stats["kept"] = len(self._items)
        if not self._items:
            raise DataError(f"no rows left: {self.report()}")

    @staticmethod
    def _resolve(
        row: dict,
        prompt_key: str,
        chosen_key: str,
        rejected_key: str,
        w: str,
        renderer: Optional[PromptRenderer] = None,
    ):
        missing = [k for k in (chosen_key, rejected_key) if k not in row]
        if missing:
            raise DataError(
                f"{w}: missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)} "
                f"(row keys: {sorted(row)})"
            )
        if not prompt_key and PROMPT_COLUMN in row:
            raise DataError(
                f"{w}: the row has a {PROMPT_COLUMN!r} column but --data.prompt_key is empty (the default "
                f"of the preference trainers, as in OpenRLHF), so it would be ignored; pass "
                f"--data.prompt_key {PROMPT_COLUMN}"
            )
        prompt = row.get(prompt_key) if prompt_key else None
        derived = prompt is None or prompt == "" or (isinstance(prompt, (list, tuple)) and not prompt)
        if derived and isinstance(row[chosen_key], str):
            if prompt_key and prompt_key not in row:
                raise DataError(
                    f"{w}: missing key {prompt_key!r} (row keys: {sorted(row)}); leave --data.prompt_key "
                    "empty for rows whose chosen and rejected are whole texts"
                )
            if not isinstance(row[rejected_key], str):
                raise DataError(
                    f"{w}: key {chosen_key!r} is a whole text but {rejected_key!r} is not; without a "
                    "prompt both must be texts (or both conversations)"
                )
            if renderer is not None and (renderer.input_template or renderer.apply_chat_template):
                raise DataError(
                    f"{w}: chosen and rejected are whole texts (no prompt column), so they are used as "
                    "they are: unset --data.input_template / --data.apply_chat_template, or give the "
                    "prompt in its own column (--data.prompt_key)"
                )
            return split_shared_prefix(row[chosen_key], row[rejected_key])
        p_c, chosen = resolve_pair(prompt, row[chosen_key], where=w, prompt_key=prompt_key, response_key=chosen_key)
        rej = row[rejected_key]
        if derived and isinstance(rej, (list, tuple)) and len(rej) > 1:
            p_r, rejected = resolve_pair(None, rej, where=w, prompt_key=prompt_key, response_key=rejected_key)
            if not same_turns(p_c, p_r):
                raise DataError(
                    f"{w}: the turns before the answer differ between {chosen_key!r} and {rejected_key!r}; "
                    "both conversations must share the same prompt"
                )
        else:
            p_r, rejected = resolve_pair(
                p_c if derived else prompt, rej, where=w, prompt_key=prompt_key, response_key=rejected_key
            )
        return p_c, chosen, rejected

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        return dict(self._items[idx])

    def report(self) -> str:
        detail = f" (chosen {self.stats['truncated_chosen']}, rejected {self.stats['truncated_rejected']})"
        return format_report("preference", self.source_name, self.max_len, self.stats, detail)


def rendered_pairs(ds: "PreferenceDataset", positions: Optional[Sequence[int]] = None) -> List[Tuple[str, Any, Any]]:
    """(where, prompt, response) of the chosen and the rejected answer of the items at ``positions`` (all by
    default): what :func:`~openrlhf.datasets.tokenizer.check_reference_tokenizer` renders."""
    out = []
    for pos in range(len(ds)) if positions is None else positions:
        it = ds[pos]
        w = f"{ds.source_name}, row {it['index'] + 1}"
        out += [(w, it["prompt"], it["chosen"]), (w, it["prompt"], it["rejected"])]
    return out


def _pairs_batch(
    prompt_ids: Sequence[Sequence[int]],
    chosen_ids: Sequence[Sequence[int]],
    rejected_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> Tokens:
    seqs = [list(p) + list(c) for p, c in zip(prompt_ids, chosen_ids, strict=True)]
    seqs += [list(p) + list(r) for p, r in zip(prompt_ids, rejected_ids, strict=True)]
    prompt_lens = [len(p) for p in prompt_ids] * 2
    input_ids = pad_right(seqs, pad_id, torch.long)
    attention_mask, loss_mask = masks([len(s) for s in seqs], prompt_lens, input_ids.shape[1])
    return Tokens(input_ids, attention_mask, loss_mask, prompt_lens=torch.tensor(prompt_lens, dtype=torch.long))


def preference_collate(
    items: Sequence[Dict[str, Any]],
    pad_id: int,
    teacher_renderers: Optional[Dict[str, PromptRenderer]] = None,
) -> PairBatch:
    """Right-padded :class:`~openrlhf.datasets.batch.PairBatch` of B pairs.

    ``tokens``: ``input_ids`` [2B, T] long, rows 0..B-1 prompt+chosen, rows B..2B-1
    prompt+rejected (same order); ``attention_mask`` [2B, T] long (1 on tokens); ``loss_mask``
    [2B, T] bool, True on response tokens, aligned with input_ids (the model shifts it);
    ``prompt_lens`` [2B] long. ``indices`` [B] long (original row indices), the raw ``prompts`` /
    ``chosen`` / ``rejected`` [B] and ``truncated`` [B] bool (either response was cut).

    ``teacher_renderers`` maps a teacher's name (``teacher``, ``teacher_2``, ...) to its
    tokenizer / template: ``own[name]`` is then that teacher's tokenisation in the same layout,
    from :func:`pair_batch` of the raw values (padded with that tokenizer's pad id). Items with
    ``logps`` ({name: (chosen, rejected)}, see :class:`openrlhf.logps.known.WithKnownLogps`) give
    ``known[name]``.
    """
    tokens = _pairs_batch(
        [it["prompt_ids"] for it in items],
        [it["chosen_ids"] for it in items],
        [it["rejected_ids"] for it in items],
        pad_id,
    )
    prompts = [it["prompt"] for it in items]
    chosen = [it["chosen"] for it in items]
    rejected = [it["rejected"] for it in items]
    own = {
        name: pair_batch(renderer, prompts, chosen, rejected, pad_token_id(renderer.tokenizer), _unfinished(items))
        for name, renderer in (teacher_renderers or {}).items()
    }
    return PairBatch(
        tokens=tokens,
        indices=torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
        truncated=torch.tensor(
            [bool(it.get("chosen_truncated") or it.get("rejected_truncated")) for it in items], dtype=torch.bool
        ),
        prompts=prompts,
        chosen=chosen,
        rejected=rejected,
        own=own,
        known={
            name: tuple(torch.tensor([it["logps"][name][k] for it in items], dtype=torch.float32) for k in (0, 1))
            for name in (items[0].get("logps", {}) if items else {})
        },
    )


def _unfinished(items: Sequence[Dict[str, Any]]) -> Tuple[List[bool], List[bool]]:
    """(chosen flags, rejected flags) of responses cut by a generation limit, as :func:`pair_batch` takes them."""
    return (
        [bool(it.get("chosen_unfinished")) for it in items],
        [bool(it.get("rejected_unfinished")) for it in items],
    )


def pair_tokens(prompt_ids: Sequence[int], chosen_ids: Sequence[int], rejected_ids: Sequence[int]) -> int:
    """Tokens one pair puts in a batch of :func:`preference_collate`'s layout: the prompt twice (before
    each response) and both responses."""
    return 2 * len(prompt_ids) + len(chosen_ids) + len(rejected_ids)


def rendered_pair_tokens(renderer: PromptRenderer, items: Sequence[Dict[str, Any]]) -> List[int]:
    """Tokens each item's pair has in ``renderer``'s tokenisation (e.g. a teacher's), exactly as
    :func:`preference_collate` renders it for that teacher (whole responses, never cut)."""
    tok = _render_pairs(
        renderer,
        [it["prompt"] for it in items],
        [it["chosen"] for it in items],
        [it["rejected"] for it in items],
        _unfinished(items),
    )
    return [pair_tokens(p, c, r) for p, c, r in zip(*tok, strict=True)]


def mismatched_pairs_batch(items: Sequence[Dict[str, Any]], pad_id: int, max_len: int) -> Tokens:
    """KTO's KL reference pairs: prompt i with the chosen and the rejected response of pair
    i + 1 (mod B), in :func:`preference_collate`'s layout (2B rows, responses cut to
    ``max_len``). Needs B >= 2, so that no prompt meets its own responses."""
    b = len(items)
    if b < 2:
        raise ValueError("mismatched pairs need a micro-batch of at least 2 pairs")
    prompts = [it["prompt_ids"] for it in items]
    nxt = [items[(i + 1) % b] for i in range(b)]
    chosen = [n["chosen_ids"][: max(max_len - len(p), 1)] for p, n in zip(prompts, nxt, strict=True)]
    rejected = [n["rejected_ids"][: max(max_len - len(p), 1)] for p, n in zip(prompts, nxt, strict=True)]
    return _pairs_batch(prompts, chosen, rejected, pad_id)


def pair_batch(
    renderer: PromptRenderer,
    prompts: Sequence[Any],
    chosen: Sequence[Any],
    rejected: Sequence[Any],
    pad_id: int,
    unfinished: Optional[Tuple[Sequence[bool], Sequence[bool]]] = None,
) -> Tokens:
    """Tokenize B raw pairs with ``renderer`` (e.g. the teacher's) into the layout of
    :func:`preference_collate`'s ``tokens`` (``input_ids``/``attention_mask``/``loss_mask`` [2B, T],
    ``prompt_lens`` [2B]). No truncation: the teacher scores the full text. ``unfinished``:
    (chosen flags, rejected flags) of responses cut by a generation limit (no closing tokens)."""
    return _pairs_batch(*_render_pairs(renderer, prompts, chosen, rejected, unfinished), pad_id)


def _render_pairs(
    renderer: PromptRenderer,
    prompts: Sequence[Any],
    chosen: Sequence[Any],
    rejected: Sequence[Any],
    unfinished: Optional[Tuple[Sequence[bool], Sequence[bool]]] = None,
) -> Tuple[List[List[int]], List[List[int]], List[List[int]]]:
    """(prompt ids, chosen ids, rejected ids) of B raw pairs in ``renderer``'s tokenisation, uncut."""
    n = len(prompts)
    flags = list(unfinished[0]) + list(unfinished[1]) if unfinished is not None else None
    tok = renderer.tokenize_many(
        list(zip(prompts, chosen, strict=True)) + list(zip(prompts, rejected, strict=True)), unfinished=flags
    )
    return [tok[i][0] for i in range(n)], [tok[i][1] for i in range(n)], [tok[n + i][1] for i in range(n)]
