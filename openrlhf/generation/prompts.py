"""Prompts to generate from: read them out of rows, check them, render them to token ids.

A row gives its prompt in one of two ways:

- under the prompt key (``--data.prompt_key``, default ``prompt``): a string or a
  list of chat messages ``[{"role", "content"}, ...]`` (one message object works too);
- ShareGPT style, when the prompt key is absent: a ``conversations`` list of
  ``{"from": "human" | "gpt" | ..., "value": text}`` turns; the first human turn
  (``from`` is ``human`` or ``user``) is the prompt, taken exactly as written.

Every row has an id: the value under ``--generate.id_key`` (a string or an int)
when the row has that key, else the row's 0-based position in the prompt file.
Malformed rows and duplicate ids are collected and raised as one
:class:`~openrlhf.datasets.DataError` naming their lines (JSON lines files) or rows,
before any model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

from transformers import GenerationConfig

from openrlhf.datasets.loading import DataError
from openrlhf.datasets.templates import PromptRenderer, prompt_problem, value_problem
from openrlhf.utils.errors import raise_problems

SHAREGPT_KEY = "conversations"
# Multi-turn prompts (MT-Bench's question.jsonl): a list of user turns, answered one after the other.
TURNS_KEY = "turns"
HUMAN_ROLES = ("human", "user")

Id = Union[str, int]


@dataclass
class PromptItem:
    """One prompt to answer. ``prompt`` is the value written back to the output
    (as given in the row, or the first human turn of a ShareGPT row)."""

    index: int  # 0-based position in the prompt file
    id: Id
    prompt: Any  # for a multi-turn item: the list of user turns
    where: str  # "<file>, line 7" / "<file>, row 5" for messages
    multi_turn: bool = False


def first_human_turn(conversations: Any) -> Optional[str]:
    """The ``value`` of the first human turn of a ShareGPT ``conversations`` list, or None."""
    if not isinstance(conversations, list):
        return None
    for turn in conversations:
        if isinstance(turn, dict) and turn.get("from") in HUMAN_ROLES:
            value = turn.get("value")
            return value if isinstance(value, str) else None
    return None


def jsonl_line_numbers(source: str) -> Optional[List[int]]:
    """1-based line numbers of the non-blank lines of a JSON lines file (row i is on
    line ``result[i]``); None when ``source`` is not a local JSON lines file."""
    path = os.path.expanduser(source)
    low = path.lower()
    if not os.path.isfile(path) or not (low.endswith(".jsonl") or low.endswith(".json")):
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if low.endswith(".json"):
        first = next((ln.lstrip() for ln in lines if ln.strip()), "")
        if first.startswith("["):  # a JSON array: rows have no lines of their own
            return None
    return [n for n, ln in enumerate(lines, start=1) if ln.strip()]


def _prompt_problem(value: Any, key: str) -> Optional[str]:
    p = value_problem(value, key)
    if p:
        return p
    if isinstance(value, str):
        return None if value.strip() else f"key {key!r} is an empty prompt"
    messages = [value] if isinstance(value, dict) else value
    if not any(m["content"].strip() for m in messages):
        return f"key {key!r}: every message is empty"
    return prompt_problem(messages, key)


def _id_problem(value: Any, key: str) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"key {key!r} (the id) is a {type(value).__name__}, expected a string or an int"
    if isinstance(value, str) and not value:
        return f"key {key!r} (the id) is an empty string"
    return None


def extract_prompts(
    rows: Sequence[dict],
    prompt_key: str,
    id_key: str,
    source_name: str,
    line_numbers: Optional[Sequence[int]] = None,
) -> List[PromptItem]:
    """One :class:`PromptItem` per row; one DataError listing every bad row otherwise."""
    if line_numbers is not None and len(line_numbers) < len(rows):
        line_numbers = None

    def loc(i: int) -> str:
        return f"line {line_numbers[i]}" if line_numbers is not None else f"row {i + 1}"

    items: List[PromptItem] = []
    problems: List[str] = []
    first_seen: Dict[Any, int] = {}
    for i, row in enumerate(rows):
        where = f"{source_name}, {loc(i)}"
        if prompt_key in row:
            prompt = row[prompt_key]
            p = _prompt_problem(prompt, prompt_key)
        elif TURNS_KEY in row:
            prompt = row[TURNS_KEY]
            ok = isinstance(prompt, list) and prompt and all(isinstance(t, str) and t.strip() for t in prompt)
            p = None if ok else f"key {TURNS_KEY!r} must be a non-empty list of non-empty strings (the user turns)"
        elif SHAREGPT_KEY in row:
            prompt = first_human_turn(row[SHAREGPT_KEY])
            if prompt is None:
                p = (
                    f"key {SHAREGPT_KEY!r} has no human turn (a {{'from': 'human', 'value': <text>}} "
                    f"object); key {prompt_key!r} is absent too"
                )
            else:
                p = None if prompt.strip() else f"key {SHAREGPT_KEY!r}: the first human turn is empty"
        else:
            prompt = None
            p = (
                f"missing key {prompt_key!r} (and no {TURNS_KEY!r} or {SHAREGPT_KEY!r} list); the row has keys "
                f"{sorted(row)[:10]}"
            )
        if p:
            problems.append(f"{loc(i)}: {p}")
        if id_key and id_key in row:
            rid = row[id_key]
            q = _id_problem(rid, id_key)
            if q:
                problems.append(f"{loc(i)}: {q}")
                continue
        else:
            rid = i
        if rid in first_seen:
            problems.append(f"{loc(i)}: duplicate id {rid!r} (first on {loc(first_seen[rid])})")
            continue
        first_seen[rid] = i
        if not p:
            items.append(
                PromptItem(
                    index=i, id=rid, prompt=prompt, where=where, multi_turn=prompt_key not in row and TURNS_KEY in row
                )
            )
    raise_problems(problems, source_name, len(rows))
    return items


# --------------------------------------------------------------------------- tokens


def render_prompt_ids(items: Sequence[PromptItem], tokenizer, data_cfg, model_path: str) -> List[List[int]]:
    """Token ids of every prompt, rendered as training renders it.

    Chat template (``--data.apply_chat_template``): the template with the generation
    prompt, tokenized without extra special tokens (the template writes its own BOS).
    Plain text: ``--data.input_template`` (or the prompt itself), with the BOS id put in
    front when the tokenizer has one that the text does not already start with.
    """
    renderer = PromptRenderer.from_data_config(tokenizer, data_cfg, model_path=model_path)
    texts: List[str] = []
    problems: List[str] = []
    for it in items:
        try:
            texts.append(renderer.render_prompt(it.prompt, it.where))
        except DataError as e:
            problems.append(str(e))
    raise_problems(problems, data_cfg.dataset, len(items))
    return renderer.prompt_text_ids(texts)


def _as_id_list(value: Any) -> List[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value if v is not None]


def end_of_turn_id(tokenizer, chat_template: Optional[str] = None) -> Optional[int]:
    """The special token the chat template writes right after an assistant answer
    (``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``), or None."""
    marker = "XQ7ZMARKER"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
            chat_template=chat_template or None,
            tokenize=False,
            add_generation_prompt=False,
        )
    except Exception:
        return None
    if not isinstance(text, str) or marker not in text:
        return None
    tail = text.split(marker, 1)[1]
    if not tail:
        return None
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            special.add(int(tid))
    return int(ids[0]) if int(ids[0]) in special else None


def stop_token_ids(
    tokenizer, *, use_chat_template: bool, chat_template: str = "", generation_eos: Any = None
) -> List[int]:
    """Ids that end a response: the generation config's eos ids (when given), the
    tokenizer's EOS, and (with a chat template) the template's end-of-turn token."""
    ids = _as_id_list(generation_eos) + _as_id_list(tokenizer.eos_token_id)
    if use_chat_template:
        eot = end_of_turn_id(tokenizer, chat_template or None)
        if eot is not None:
            ids.append(eot)
    out = list(dict.fromkeys(ids))
    if not out:
        raise DataError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', '<tokenizer>')} has no EOS token and its "
            "generation config names none: responses would never stop"
        )
    return out


def generation_config_eos(model_path: str) -> Any:
    """``eos_token_id`` of the model's ``generation_config.json`` (int, list or None)."""
    try:
        return GenerationConfig.from_pretrained(model_path).eos_token_id
    except Exception:  # no generation_config.json: the tokenizer's EOS is enough
        return None
