"""Turn a (prompt, response) pair into token ids for one tokenizer.

The same strings / messages go through :class:`PromptRenderer` (or
:func:`tokenize_pair`) once with the student's tokenizer and again with the
teacher's, so each model scores the text in its own vocabulary and chat format.

A prompt is a string or a list of chat messages ``[{"role", "content"}, ...]``.
A response is a string, one assistant message, or a list of messages whose last
turn is the assistant's answer: either just ``[assistant]`` or a whole
conversation ``[user, assistant]`` (then the turns before the answer are the
prompt; when a prompt is given too, it must equal those turns).

Two ways to render:

- chat template (``apply_chat_template=True``)::

      prompt_text = template(prompt_messages, add_generation_prompt=True)
      full_text   = template(prompt_messages + [assistant], add_generation_prompt=False)

  Both are tokenized (``add_special_tokens=False``) and the response tokens are
  the full tokens after the prompt tokens, so the end-of-turn token and whatever
  the template writes after it (``<|im_end|>\\n``) belong to the response. The
  full tokens must start with the prompt tokens; a template for which they do
  not is refused with an error naming the row. The template writes its own BOS.

- plain text: ``prompt_text = input_template.format(prompt)`` (or the prompt
  itself) and the response is ``response + eos_token``, so the model learns to
  stop. Prompt and response are tokenized separately
  (``add_special_tokens=False``; the prompt tokens are then an exact prefix) and,
  when the tokenizer has a BOS token that the prompt text does not already start
  with, the BOS id is put in front of the prompt ids. The EOS id is not appended
  twice when the response text already ends with the EOS token.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional, Sequence, Tuple, Union

from openrlhf.config.schema import SFT_INPUT_TEMPLATE
from openrlhf.config.validate import input_template_problem

from .loading import DataError

Message = dict
Prompt = Union[str, List[Message]]
Response = Union[str, Message]

ASSISTANT = "assistant"
USER = "user"
# The roles chat templates know. ShareGPT's "human" / "gpt" must be mapped to user / assistant.
CHAT_ROLES = ("system", USER, ASSISTANT, "tool")


def _at(where: str) -> str:
    return f"{where}: " if where else ""


# --------------------------------------------------------------------------- checks


def message_problem(msg: Any, key: str, i: int) -> Optional[str]:
    """Why ``msg`` (message ``i`` under ``key``) is not a chat message, or None."""
    if not isinstance(msg, dict):
        return f"key {key!r}: message {i} is a {type(msg).__name__}, expected an object with 'role' and 'content'"
    for k in ("role", "content"):
        if k not in msg:
            return f"key {key!r}: message {i} has no {k!r} key (keys: {sorted(msg)})"
        if not isinstance(msg[k], str):
            return f"key {key!r}: message {i} {k!r} is a {type(msg[k]).__name__}, expected a string"
    if msg["role"] not in CHAT_ROLES:
        return (
            f"key {key!r}: message {i} has role {msg['role']!r}, not a chat role ({', '.join(CHAT_ROLES)}); "
            "map ShareGPT's human/gpt to user/assistant"
        )
    return None


def prompt_problem(prompt: Any, key: str) -> Optional[str]:
    """Why a prompt of chat messages cannot be answered (no user turn, or it ends with the
    assistant), or None. A string prompt is always a user turn."""
    if isinstance(prompt, dict):
        prompt = [prompt]
    if not isinstance(prompt, (list, tuple)) or not prompt:
        return None
    if not any(m.get("role") == USER for m in prompt):
        return f"key {key!r}: the prompt has no {USER!r} message (roles: {[m.get('role') for m in prompt]})"
    if prompt[-1].get("role") == ASSISTANT:
        return f"key {key!r}: the prompt ends with an {ASSISTANT!r} turn; it must end with the turn to answer"
    return None


def value_problem(value: Any, key: str) -> Optional[str]:
    """Why ``value`` under ``key`` is neither a string nor chat message(s), or None."""
    if isinstance(value, str):
        return None
    if isinstance(value, dict):
        return message_problem(value, key, 0)
    if isinstance(value, (list, tuple)):
        if not value:
            return f"key {key!r} is an empty list of messages"
        for i, m in enumerate(value):
            p = message_problem(m, key, i)
            if p:
                return p
        return None
    if value is None:  # JSON null, or a CSV cell that is empty or N/A (datasets' CSV reading, as OpenRLHF's)
        return f"key {key!r} has no value (null; in a CSV file an empty or N/A cell), expected a string or a list of chat messages"
    return f"key {key!r} is a {type(value).__name__}, expected a string or a list of chat messages"


def same_turns(a: Union[str, Sequence[Message]], b: Union[str, Sequence[Message]]) -> bool:
    """Two prompts are the same: equal strings, or messages with equal roles and contents."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return len(a) == len(b) and all(
        x["role"] == y["role"] and x["content"] == y["content"] for x, y in zip(a, b, strict=True)
    )


def _as_messages(prompt: Prompt) -> List[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, dict):
        return [prompt]
    return list(prompt)


def response_text(response: Response) -> str:
    """The text of a resolved response (a string, or the assistant message's content)."""
    return response["content"] if isinstance(response, dict) else response


def resolve_pair(
    prompt: Any,
    response: Any,
    *,
    where: str = "",
    prompt_key: str = "prompt",
    response_key: str = "response",
) -> Tuple[Prompt, Response]:
    """Normalise a raw (prompt, response) into ``(str | [messages], str | assistant message)``.

    ``prompt=None`` means the row has no prompt: the response must then be a whole
    conversation. Idempotent: resolving a resolved pair returns it unchanged.
    """
    p = value_problem(response, response_key)
    if p:
        raise DataError(f"{_at(where)}{p}")
    if prompt is not None and not (isinstance(prompt, (list, tuple)) and len(prompt) == 0):
        p = value_problem(prompt, prompt_key)
        if p:
            raise DataError(f"{_at(where)}{p}")

    if isinstance(response, dict):
        response = [response]
    if isinstance(response, (list, tuple)):
        last = response[-1]
        if last["role"] != ASSISTANT:
            raise DataError(
                f"{_at(where)}key {response_key!r}: the last message must be the {ASSISTANT!r} answer, "
                f"got role {last['role']!r}"
            )
        before = list(response[:-1])
        if before:
            if prompt is None or prompt == "" or (isinstance(prompt, (list, tuple)) and not prompt):
                prompt = before
            elif not same_turns(_as_messages(prompt), before):
                raise DataError(
                    f"{_at(where)}key {prompt_key!r} does not match the turns before the answer in "
                    f"key {response_key!r}; give either a prompt and the answer only, or the whole conversation"
                )
            else:
                prompt = _as_messages(prompt) if not isinstance(prompt, str) else prompt
        response = last

    if prompt is None:
        raise DataError(f"{_at(where)}missing key {prompt_key!r}")
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise DataError(f"{_at(where)}key {prompt_key!r} is an empty list of messages")
        prompt = list(prompt)
    p = prompt_problem(prompt, prompt_key)
    if p:
        raise DataError(f"{_at(where)}{p}")
    elif isinstance(prompt, dict):
        prompt = [prompt]
    return prompt, response


# --------------------------------------------------------------------------- renderer


class PromptRenderer:
    """Renders and tokenizes (prompt, response) pairs for one tokenizer.

    ``chat_template`` (non-empty) replaces the tokenizer's own template without
    modifying the tokenizer. ``model_path`` and the ``*_flag`` names only go into
    error messages (use ``--teacher...`` names for a teacher).
    """

    def __init__(
        self,
        tokenizer,
        *,
        apply_chat_template: bool = False,
        input_template: str = "",
        chat_template: str = "",
        model_path: Optional[str] = None,
        template_flag: str = "--data.apply_chat_template",
        input_template_flag: str = "--data.input_template",
        chat_template_flag: str = "--data.tokenizer_chat_template",
    ):
        self.tokenizer = tokenizer
        self.apply_chat_template = bool(apply_chat_template)
        self.input_template = input_template or ""
        self.chat_template = chat_template or None
        self.model_path = model_path or getattr(tokenizer, "name_or_path", "") or "<tokenizer>"
        self.template_flag = template_flag
        self.input_template_flag = input_template_flag
        self.chat_template_flag = chat_template_flag

        if self.apply_chat_template:
            if self.input_template:
                raise DataError(
                    f"{template_flag} and {input_template_flag} are both set; the chat template "
                    f"already formats the prompt, so set only one"
                )
            if not (self.chat_template or getattr(tokenizer, "chat_template", None)):
                raise DataError(
                    f"{template_flag} is set but the tokenizer of {self.model_path} has no chat template; "
                    f"give one with {chat_template_flag}, or turn the flag off and use {input_template_flag}"
                )
        else:
            if tokenizer.eos_token_id is None:
                raise DataError(
                    f"the tokenizer of {self.model_path} has no EOS token, needed to end responses "
                    f"when {template_flag} is off"
                )
            problem = input_template_problem(self.input_template) if self.input_template else ""
            if problem:
                raise DataError(f"{input_template_flag} {self.input_template!r}: {problem}")

    @classmethod
    def from_data_config(cls, tokenizer, data_cfg, model_path: Optional[str] = None) -> "PromptRenderer":
        """From a --data.* section. train_sft's default --data.input_template is unused with the chat
        template (as in OpenRLHF); any other template set with it is refused."""
        template = data_cfg.input_template
        if data_cfg.apply_chat_template and template == SFT_INPUT_TEMPLATE:
            template = ""
        return cls(
            tokenizer,
            apply_chat_template=data_cfg.apply_chat_template,
            input_template=template,
            chat_template=data_cfg.tokenizer_chat_template,
            model_path=model_path,
        )

    # ---- text

    def _template(self, messages: List[Message], add_generation_prompt: bool, where: str) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as e:  # jinja errors (e.g. "system role not supported") and friends
            raise DataError(
                f"{_at(where)}the chat template of {self.model_path} failed: {type(e).__name__}: {e}"
            ) from None
        if not isinstance(text, str):  # pragma: no cover - defensive against API drift
            raise DataError(f"the chat template of {self.model_path} did not return text")
        return text

    def chat_text(self, messages: List[Message], add_generation_prompt: bool, where: str = "") -> str:
        """``messages`` rendered by the chat template (needs ``apply_chat_template``)."""
        if not self.apply_chat_template:
            raise DataError(f"{_at(where)}rendering a conversation needs {self.template_flag}")
        return self._template(messages, add_generation_prompt, where)

    def _plain_prompt(self, prompt: Prompt, where: str) -> str:
        if isinstance(prompt, list):
            if len(prompt) == 1 and prompt[0]["role"] == "user":
                prompt = prompt[0]["content"]
            else:
                raise DataError(
                    f"{_at(where)}the prompt is a conversation of {len(prompt)} messages; "
                    f"rendering it needs {self.template_flag}"
                )
        if self.input_template:
            return self.input_template.format(prompt)
        return prompt

    @staticmethod
    def _content(response: Response) -> str:
        return response_text(response)

    def render_prompt(self, prompt: Any, where: str = "") -> str:
        """The prompt text a generator continues (chat: with the generation prompt)."""
        if isinstance(prompt, dict):
            prompt = [prompt]
        p = value_problem(prompt, "prompt")
        if p:
            raise DataError(f"{_at(where)}{p}")
        if self.apply_chat_template:
            return self._template(_as_messages(prompt), True, where)
        return self._plain_prompt(list(prompt) if isinstance(prompt, tuple) else prompt, where)

    def render(self, prompt: Any, response: Any, where: str = "") -> Tuple[str, str]:
        """``(prompt_text, full_text)``; full_text = prompt_text + the response text."""
        return self._render(prompt, response, where, None)

    def _render(self, prompt: Any, response: Any, where: str, cache: Optional[dict]) -> Tuple[str, str]:
        prompt, response = resolve_pair(prompt, response, where=where)
        if self.apply_chat_template:
            msgs = _as_messages(prompt)
            answer = response if isinstance(response, dict) else {"role": ASSISTANT, "content": response}
            key = json.dumps(msgs, sort_keys=True, default=str) if cache is not None else None
            prompt_text = cache.get(key) if cache is not None else None
            if prompt_text is None:
                prompt_text = self._template(msgs, True, where)
                if cache is not None:
                    cache[key] = prompt_text
            full_text = self._template(msgs + [answer], False, where)
            if not full_text.startswith(prompt_text):
                raise DataError(
                    f"{_at(where)}the chat template of {self.model_path} renders the conversation with the "
                    "answer so that it does not start with the prompt rendered with add_generation_prompt=True; "
                    f"the response tokens cannot be separated (give a template with {self.chat_template_flag})"
                )
            return prompt_text, full_text
        prompt_text = self._plain_prompt(prompt, where)
        content = self._content(response)
        eos = self.tokenizer.eos_token
        if not content.endswith(eos):
            content = content + eos
        return prompt_text, prompt_text + content

    # ---- ids

    def _with_bos(self, text: str, ids: Sequence[int]) -> List[int]:
        """Plain-text path: the BOS id in front when the tokenizer has one the text does not start with.
        (A chat template writes its own BOS.)"""
        tok = self.tokenizer
        ids = list(ids)
        if (
            not self.apply_chat_template
            and tok.bos_token_id is not None
            and tok.bos_token
            and not text.startswith(tok.bos_token)
        ):
            ids = [tok.bos_token_id] + ids
        return ids

    def prompt_text_ids(self, texts: Sequence[str]) -> List[List[int]]:
        """Token ids of rendered prompt texts (from :meth:`render_prompt`): what a generator continues."""
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [self._with_bos(t, i) for t, i in zip(texts, ids, strict=True)]

    def tokenize(self, prompt: Any, response: Any, where: str = "") -> Tuple[List[int], List[int]]:
        """``(prompt_ids, response_ids)`` in this tokenizer's vocabulary."""
        return self.tokenize_many([(prompt, response)], [where])[0]

    def tokenize_many(
        self,
        pairs: Sequence[Tuple[Any, Any]],
        wheres: Optional[Sequence[str]] = None,
        unfinished: Optional[Sequence[bool]] = None,
    ) -> List[Tuple[List[int], List[int]]]:
        """Batched :meth:`tokenize` (one tokenizer call per side).

        ``unfinished[i]``: response i was cut by a generation limit, it did not end there, so its
        ids stop after its text: without the end-of-turn / EOS tokens that close a finished answer."""
        wheres = list(wheres) if wheres is not None else [""] * len(pairs)
        open_ended = list(unfinished) if unfinished is not None else [False] * len(pairs)
        if not pairs:
            return []
        tok = self.tokenizer
        if self.apply_chat_template:
            cache: dict = {}
            texts = [self._render(p, r, w, cache) for (p, r), w in zip(pairs, wheres, strict=True)]
            # Each distinct prompt text is tokenized once (chosen and rejected share it).
            uniq = list(dict.fromkeys(t[0] for t in texts))
            uniq_ids = dict(zip(uniq, tok(uniq, add_special_tokens=False)["input_ids"], strict=True))
            prompt_ids = [uniq_ids[t[0]] for t in texts]
            full_ids = tok([t[1] for t in texts], add_special_tokens=False)["input_ids"]
            cut = [i for i, flag in enumerate(open_ended) if flag]
            open_ids = (
                dict(
                    zip(
                        cut,
                        tok(
                            [texts[i][0] + self._content(resolve_pair(*pairs[i])[1]) for i in cut],
                            add_special_tokens=False,
                        )["input_ids"],
                        strict=True,
                    )
                )
                if cut
                else {}
            )
            out = []
            for i, (p_ids, f_ids, w) in enumerate(zip(prompt_ids, full_ids, wheres, strict=True)):
                n = len(p_ids)
                if f_ids[:n] != p_ids:
                    raise DataError(
                        f"{_at(w)}with the chat template of {self.model_path}, the tokens of the full "
                        "conversation do not start with the tokens of the prompt (the tokenizer merges "
                        "across the prompt/answer boundary); the response tokens cannot be separated"
                    )
                end = len(f_ids)
                o_ids = open_ids.get(i)
                # Drop what closes the turn: the tokens after those of prompt + text alone (when these
                # are an exact prefix; if the tokenizer merges across the boundary, nothing is dropped).
                if o_ids is not None and len(o_ids) > n and f_ids[: len(o_ids)] == o_ids:
                    end = len(o_ids)
                out.append((list(p_ids), list(f_ids[n:end])))
            return out

        prompt_texts, contents = [], []
        for (p, r), w in zip(pairs, wheres, strict=True):
            p, r = resolve_pair(p, r, where=w)
            prompt_texts.append(self._plain_prompt(p, w))
            contents.append(self._content(r))
        eos_id, eos = tok.eos_token_id, tok.eos_token
        prompt_ids = tok(prompt_texts, add_special_tokens=False)["input_ids"]
        resp_ids = tok(contents, add_special_tokens=False)["input_ids"]
        out = []
        for text, p_ids, content, r_ids, open_end in zip(
            prompt_texts, prompt_ids, contents, resp_ids, open_ended, strict=True
        ):
            p_ids = self._with_bos(text, p_ids)
            r_ids = list(r_ids)
            if not open_end and not (content.endswith(eos) and r_ids and r_ids[-1] == eos_id):
                r_ids.append(eos_id)
            out.append((p_ids, r_ids))
        return out


# Anthropic HH's turn marker: the answer follows the last one that chosen and rejected share.
HH_ASSISTANT = "\n\nAssistant:"


def split_shared_prefix(chosen: str, rejected: str) -> Tuple[str, str, str]:
    """Whole texts that share a prompt -> ``(prompt, chosen answer, rejected answer)``.

    The prompt ends after the last ``"\\n\\nAssistant:"`` (Anthropic HH) inside the longest common
    prefix; without one, just before the last whitespace run of the common prefix, so that no word
    is cut (each answer then starts with that whitespace, as a BPE tokenizer expects). The prompt is
    empty when the common prefix has neither."""
    n = 0
    for a, b in zip(chosen, rejected, strict=False):  # the common prefix: the texts differ in length
        if a != b:
            break
        n += 1
    head = chosen[:n]
    k = head.rfind(HH_ASSISTANT)
    if k >= 0:
        cut = k + len(HH_ASSISTANT)
    else:
        cut = max((i for i, ch in enumerate(head) if ch.isspace()), default=0)
        while cut > 0 and head[cut - 1].isspace():
            cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


def tokenize_pair(
    tokenizer,
    prompt: Any,
    response: Any,
    *,
    apply_chat_template: bool,
    input_template: str = "",
    chat_template: str = "",
    where: str = "",
) -> Tuple[List[int], List[int]]:
    """``(prompt_ids, response_ids)`` of one pair for ``tokenizer`` (see the module doc).

    For a teacher of another family pass the teacher's tokenizer (and its
    ``--teacher.tokenizer_chat_template`` as ``chat_template``) with the same raw
    prompt/response kept in the preference items.
    """
    renderer = PromptRenderer(
        tokenizer,
        apply_chat_template=apply_chat_template,
        input_template=input_template,
        chat_template=chat_template,
    )
    return renderer.tokenize(prompt, response, where)
