"""Supervised fine-tuning data: (prompt, response) rows -> token ids + response mask.

A row holds ``data.input_key`` (the prompt: a string or chat messages) and
``data.output_key`` (the response: a string or message(s)). When ``output_key`` is empty
or not in the row and ``input_key`` holds a conversation, its last turn (which must be the
assistant's) is the response and the turns before it are the prompt.

Two other modes:

- ``data.multiturn`` (with the chat template): ``input_key`` holds a whole conversation
  (``output_key``'s message(s), when given, are appended) and the loss covers every assistant
  turn: for turn t, the tokens of ``template(turns[:t+1])`` after those of
  ``template(turns[:t], add_generation_prompt=True)``. The rendering of each shorter
  conversation must be a token prefix of the whole one (refused with the row otherwise).
- pre-training (``pretrain=True``, ``--model.pretrain_mode_enable``): the text under
  ``input_key`` alone (BOS when the tokenizer has one, the text, EOS), the loss on every token.

Over-long rows (``data.max_len`` counts prompt + response tokens): a row whose
prompt alone has ``>= max_len - 2`` tokens is dropped (OpenRLHF's rule); otherwise the response is cut
to ``max_len - prompt_len`` tokens. Rows with an empty (or whitespace-only) response are dropped.
Everything is counted in ``stats`` and summarised by ``report()``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from .batch import SeqBatch, Tokens
from .common import format_report, masks, pad_right, prompt_too_long, raise_problems, unfinished_flag, where
from .loading import DataError
from .templates import ASSISTANT, PromptRenderer, message_problem, resolve_pair, response_text, value_problem


class SFTDataset(Dataset):
    """Items: ``input_ids`` (LongTensor [L]), ``loss_mask`` (BoolTensor [L], True on
    response tokens), ``prompt_len`` (int: tokens before the first trained one), ``index``
    (original row index), and the resolved ``prompt`` / ``response`` (str or messages) for
    re-tokenization (multi-turn: the whole conversation as ``prompt``, ``response`` None)."""

    def __init__(
        self,
        rows: Sequence[dict],
        tokenizer,
        data_cfg,
        source_name: str = "<rows>",
        *,
        model_path: Optional[str] = None,
        renderer: Optional[PromptRenderer] = None,
        pretrain: bool = False,
    ):
        self.source_name = source_name
        self.max_len = int(data_cfg.max_len)
        if self.max_len <= 0:
            raise DataError(f"--data.max_len must be positive, got {self.max_len}")
        self.stats: Dict[str, int] = dict(
            rows=len(rows), kept=0, dropped_prompt_too_long=0, dropped_empty_response=0, truncated_response=0
        )
        self._items: List[Dict[str, Any]] = []
        self.rows_kept_indices: List[int] = []
        if pretrain:
            self._build_pretrain(rows, tokenizer, data_cfg.input_key, source_name)
        elif getattr(data_cfg, "multiturn", False):
            self.renderer = renderer or PromptRenderer.from_data_config(tokenizer, data_cfg, model_path=model_path)
            self._build_multiturn(rows, data_cfg.input_key, data_cfg.output_key, source_name)
        else:
            self.renderer = renderer or PromptRenderer.from_data_config(tokenizer, data_cfg, model_path=model_path)
            self._build_pairs(rows, data_cfg.input_key, data_cfg.output_key, source_name)
        self.stats["kept"] = len(self._items)
        if not self._items:
            raise DataError(f"no rows left: {self.report()}")

    def _keep(self, i: int, ids: List[int], prompt_len: int, prompt, response, spans=None) -> None:
        item = dict(ids=ids, prompt_len=prompt_len, index=i, prompt=prompt, response=response)
        if spans is not None:
            item["spans"] = spans
        self._items.append(item)
        self.rows_kept_indices.append(i)

    def _build_pairs(self, rows, in_key: str, out_key: str, source_name: str) -> None:
        pairs, wheres, open_ended, problems = [], [], [], []
        for i, row in enumerate(rows):
            w = where(source_name, i, rows)
            try:
                pairs.append(self._resolve(row, in_key, out_key, w))
                open_ended.append(unfinished_flag(row, out_key, w))
                wheres.append(w)
            except DataError as e:
                problems.append(str(e))
        raise_problems(problems, source_name, len(rows))

        tokenized = self.renderer.tokenize_many(pairs, wheres, open_ended)
        for i, ((prompt, response), (p_ids, r_ids)) in enumerate(zip(pairs, tokenized, strict=True)):
            if not response_text(response).strip():
                self.stats["dropped_empty_response"] += 1
                continue
            if prompt_too_long(len(p_ids), self.max_len):
                self.stats["dropped_prompt_too_long"] += 1
                continue
            budget = self.max_len - len(p_ids)
            if len(r_ids) > budget:
                r_ids = r_ids[:budget]
                self.stats["truncated_response"] += 1
            self._keep(i, p_ids + r_ids, len(p_ids), prompt, response)

    def _build_pretrain(self, rows, tokenizer, in_key: str, source_name: str) -> None:
        problems, texts = [], []
        for i, row in enumerate(rows):
            w = where(source_name, i, rows)
            if in_key not in row:
                problems.append(f"{w}: missing key {in_key!r} (row keys: {sorted(row)})")
            elif not isinstance(row[in_key], str):
                problems.append(
                    f"{w}: key {in_key!r} is a {type(row[in_key]).__name__}; pre-training "
                    "(--model.pretrain_mode_enable) reads plain text"
                )
            else:
                texts.append(row[in_key])
        raise_problems(problems, source_name, len(rows))
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        if tokenizer.eos_token_id is None:
            raise DataError("the tokenizer has no EOS token, needed to end each text in pre-training mode")
        for i, (text, ids) in enumerate(
            zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True)
        ):
            if not text.strip():
                self.stats["dropped_empty_response"] += 1
                continue
            ids = bos + list(ids) + [tokenizer.eos_token_id]
            if len(ids) > self.max_len:
                ids = ids[: self.max_len]
                self.stats["truncated_response"] += 1
            self._keep(i, ids, 0, "", text)

    def _build_multiturn(self, rows, in_key: str, out_key: str, source_name: str) -> None:
        convs, problems = [], []
        for i, row in enumerate(rows):
            w = where(source_name, i, rows)
            try:
                convs.append(self._conversation(row, in_key, out_key, w))
            except DataError as e:
                problems.append(str(e))
        raise_problems(problems, source_name, len(rows))
        tok, r = self.renderer.tokenizer, self.renderer
        if not r.apply_chat_template:
            raise DataError(
                "--data.multiturn needs --data.apply_chat_template (each assistant turn is located in "
                "the chat template's rendering)"
            )
        for i, msgs in enumerate(convs):
            w = where(source_name, i, rows)
            full = tok(r.chat_text(msgs, False, w), add_special_tokens=False)["input_ids"]
            spans = []
            for t, m in enumerate(msgs):
                if m["role"] != ASSISTANT:
                    continue
                before = tok(r.chat_text(msgs[:t], True, w), add_special_tokens=False)["input_ids"]
                upto = tok(r.chat_text(msgs[: t + 1], False, w), add_special_tokens=False)["input_ids"]
                if upto[: len(before)] != before or full[: len(upto)] != upto:
                    raise DataError(
                        f"{w}: with the chat template of {r.model_path}, the tokens of the conversation up to "
                        f"assistant turn {t} are not a prefix of the whole conversation's (the template renders "
                        "earlier turns differently later); --data.multiturn cannot locate that turn"
                    )
                if m["content"].strip():
                    spans.append((len(before), len(upto)))
            if not spans:
                self.stats["dropped_empty_response"] += 1
                continue
            if prompt_too_long(spans[0][0], self.max_len):
                self.stats["dropped_prompt_too_long"] += 1
                continue
            if len(full) > self.max_len:
                full = full[: self.max_len]
                spans = [(a, min(b, self.max_len)) for a, b in spans if a < self.max_len]
                self.stats["truncated_response"] += 1
            self._keep(i, full, spans[0][0], msgs, None, spans)

    @staticmethod
    def _conversation(row: dict, in_key: str, out_key: str, w: str) -> List[dict]:
        """--data.multiturn: the row's whole conversation (``output_key``'s message(s) appended)."""
        if in_key not in row:
            raise DataError(f"{w}: missing key {in_key!r} (row keys: {sorted(row)})")
        msgs = row[in_key]
        if not isinstance(msgs, (list, tuple)):
            raise DataError(
                f"{w}: key {in_key!r} is a {type(msgs).__name__}; --data.multiturn needs a "
                "conversation (a list of chat messages)"
            )
        p = value_problem(list(msgs), in_key)
        if p:
            raise DataError(f"{w}: {p}")
        msgs = list(msgs)
        if out_key and out_key in row:
            extra = row[out_key]
            extra = [extra] if isinstance(extra, dict) else extra
            if isinstance(extra, str):
                extra = [{"role": ASSISTANT, "content": extra}]
            for j, m in enumerate(extra):
                p = message_problem(m, out_key, j)
                if p:
                    raise DataError(f"{w}: {p}")
            msgs += list(extra)
        if not any(m["role"] == ASSISTANT for m in msgs):
            raise DataError(f"{w}: key {in_key!r}: the conversation has no {ASSISTANT!r} turn to train on")
        if msgs[0]["role"] == ASSISTANT:
            raise DataError(
                f"{w}: key {in_key!r}: the conversation starts with an {ASSISTANT!r} turn; the first "
                "answer needs a prompt before it"
            )
        return msgs

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
        if not out_key:
            raise DataError(
                f"{w}: key {in_key!r} is a string and --data.output_key is not set; name the response "
                f"column with --data.output_key, or give whole conversations under {in_key!r}"
            )
        raise DataError(f"{w}: missing key {out_key!r} (row keys: {sorted(row)})")

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        it = self._items[idx]
        ids = torch.tensor(it["ids"], dtype=torch.long)
        loss_mask = torch.zeros(len(ids), dtype=torch.bool)
        for a, b in it.get("spans", [(it["prompt_len"], len(ids))]):
            loss_mask[a:b] = True
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


def sft_collate(items: Sequence[Dict[str, Any]], pad_id: int) -> SeqBatch:
    """Right-padded :class:`~openrlhf.datasets.batch.SeqBatch`: ``tokens`` with ``input_ids`` [B, T] long,
    ``attention_mask`` [B, T] long (1 on tokens), ``loss_mask`` [B, T] bool (True on the trained tokens,
    aligned with input_ids: the model shifts it; the items' own masks), ``prompt_lens`` [B]; ``indices``
    [B]."""
    seqs = [list(it["input_ids"].tolist() if torch.is_tensor(it["input_ids"]) else it["input_ids"]) for it in items]
    input_ids = pad_right(seqs, pad_id, torch.long)
    prompt_lens = [int(it["prompt_len"]) for it in items]
    attention_mask, loss_mask = masks([len(s) for s in seqs], prompt_lens, input_ids.shape[1])
    if all("loss_mask" in it for it in items):
        loss_mask = pad_right([it["loss_mask"].tolist() for it in items], False, torch.bool)
    tokens = Tokens(input_ids, attention_mask, loss_mask, prompt_lens=torch.tensor(prompt_lens, dtype=torch.long))
    return SeqBatch(tokens, torch.tensor([int(it.get("index", -1)) for it in items], dtype=torch.long))
