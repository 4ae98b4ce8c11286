"""Supervised fine-tuning data: (prompt, response) rows -> token ids + response mask.

A row holds ``data.input_key`` (the prompt: a string or chat messages) and
``data.output_key`` (the response: a string or message(s)). When the row has no
``output_key`` and ``input_key`` holds a conversation, its last turn (which must
be the assistant's) is the response and the turns before it are the prompt.

Over-long rows (``data.max_len`` counts prompt + response tokens): a row whose
prompt alone has ``>= max_len`` tokens is dropped; otherwise the response is cut
to ``max_len - prompt_len`` tokens. Rows with an empty (or whitespace-only) response are dropped.
Everything is counted in ``stats`` and summarised by ``report()``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from .common import format_report, masks, pad_right, raise_problems, unfinished_flag, where
from .loading import DataError
from .templates import PromptRenderer, resolve_pair, response_text


class SFTDataset(Dataset):
    """Items: ``input_ids`` (LongTensor [L]), ``loss_mask`` (BoolTensor [L], True on
    response tokens), ``prompt_len`` (int), ``index`` (original row index), and the
    resolved ``prompt`` / ``response`` (str or messages) for re-tokenization."""

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

        in_key, out_key = data_cfg.input_key, data_cfg.output_key
        pairs, wheres, open_ended, problems = [], [], [], []
        for i, row in enumerate(rows):
            w = where(source_name, i)
            try:
                pairs.append(self._resolve(row, in_key, out_key, w))
                open_ended.append(unfinished_flag(row, out_key, w))
                wheres.append(w)
            except DataError as e:
                problems.append(str(e))
        raise_problems(problems, source_name, len(rows))

        tokenized = self.renderer.tokenize_many(pairs, wheres, open_ended)

        self.stats: Dict[str, int] = dict(
            rows=len(rows), kept=0, dropped_prompt_too_long=0, dropped_empty_response=0, truncated_response=0
        )
        self._items: List[Dict[str, Any]] = []
        self.rows_kept_indices: List[int] = []
        for i, ((prompt, response), (p_ids, r_ids)) in enumerate(zip(pairs, tokenized)):
            if not response_text(response).strip():
                self.stats["dropped_empty_response"] += 1
                continue
            if len(p_ids) >= self.max_len:
                self.stats["dropped_prompt_too_long"] += 1
                continue
            budget = self.max_len - len(p_ids)
            if len(r_ids) > budget:
                r_ids = r_ids[:budget]
                self.stats["truncated_response"] += 1
            self._items.append(
                dict(ids=p_ids + r_ids, prompt_len=len(p_ids), index=i, prompt=prompt, response=response)
            )
            self.rows_kept_indices.append(i)
        self.stats["kept"] = len(self._items)
        if not self._items:
            raise DataError(f"no rows left: {self.report()}")

    @staticmethod
    def _resolve(row: dict, in_key: str, out_key: str, w: str):
        prompt = row.get(in_key) if in_key else None
        if out_key and out_key in row:
            return resolve_pair(prompt, row[out_key], where=w, prompt_key=in_key, response_key=out_key)
        if isinstance(prompt, (list, tuple)):
            # A whole conversation under input_key: its last turn is the response.
            if len(prompt) < 2:
                raise DataError(
                    f"{w}: key {in_key!r} holds a conversation of {len(prompt)} message(s) and there is no "
                    f"key {out_key!r}; the conversation needs turns before the assistant's answer"
                )
            return resolve_pair(None, prompt, where=w, prompt_key=in_key, response_key=in_key)
        if prompt is None:
            raise DataError(f"{w}: missing key {in_key!r} (row keys: {sorted(row)})")
        raise DataError(f"{w}: missing key {out_key!r} (row keys: {sorted(row)})")

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        it = self._items[idx]
        ids = torch.tensor(it["ids"], dtype=torch.long)
        loss_mask = torch.zeros(len(ids), dtype=torch.bool)
        loss_mask[it["prompt_len"] :] = True
        return dict(
            input_ids=ids,
            loss_mask=loss_mask,
            prompt_len=it["prompt_len"],
            index=it["index"],
            prompt=it["prompt"],
            response=it["response"],
        )

    def report(self) -> str:
        return format_report("sft", self.source_name, self.max_len, self.stats)


def sft_collate(items: Sequence[Dict[str, Any]], pad_id: int) -> Dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids`` [B, T] long, ``attention_mask`` [B, T] long (1 on
    tokens), ``loss_mask`` [B, T] bool (True on response tokens, aligned with input_ids:
    the model shifts it), ``prompt_lens`` [B], ``indices`` [B]."""
    seqs = [list(it["input_ids"].tolist() if torch.is_tensor(it["input_ids"]) else it["input_ids"]) for it in items]
    input_ids = pad_right(seqs, pad_id, torch.long)
    prompt_lens = [int(it["prompt_len"]) for it in items]
    attention_mask, loss_mask = masks([len(s) for s in seqs], prompt_lens, input_ids.shape[1])
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        prompt_lens=torch.tensor(prompt_lens, dtype=torch.long),
        indices=torch.tensor([int(it.get("index", -1)) for it in items], dtype=torch.long),
    )
