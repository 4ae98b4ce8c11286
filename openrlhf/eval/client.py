"""The one client every judged evaluation uses: an OpenAI-compatible chat-completions endpoint
(``vllm serve`` / ``python -m vllm.entrypoints.openai.api_server`` on a GPU, a hosted API), with
parallel requests, retries with backoff, a JSONL cache of every judgment and token accounting.

The cache (``judge_cache.jsonl`` in the output folder unless told otherwise) holds one line per
judgment, keyed by a hash of the endpoint (``--judge.base_url``), the judge model, the sampling settings
and the full prompt (every message): a run started again, after a kill or with more candidates, asks only
for what is not cached (requests in flight at a kill are sent again; no verdict is lost or written twice),
and two servers that serve the same model name never share verdicts. A reply that is empty or was cut by
the token limit is used for this run but not cached (the next run asks again). An answer without a
choice (HTTP 200, ``"choices": []``) is a failed request, retried.
Lines are appended and fsynced one by one, and a last line torn by a kill is repaired first.

Retries: 408, 409, 429, 5xx, timeouts and dropped connections, waiting what the server's
``Retry-After`` (or ``retry-after-ms``) header asks when it sends one, else an exponential backoff
(1, 2, 4, ... 30 s), both with random jitter (x 1.0-1.5) so parallel requests do not retry in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from openrlhf.utils.errors import Interrupted, UserError, require_package
from openrlhf.utils.jsonl import append_jsonl, repair_torn_tail
from openrlhf.utils.retry import RETRY_STATUS, retry_wait

# Per generated position: the (token, log-probability) candidates the endpoint returned.
TopLogprobs = List[List[Tuple[str, float]]]


def _top_logprobs(choice) -> Optional[TopLogprobs]:
    """The candidates per generated position of an OpenAI ``logprobs`` answer, or None when absent."""
    lp = getattr(choice, "logprobs", None)
    content = getattr(lp, "content", None) if lp is not None else None
    if not content:
        return None
    return [[(c.token, float(c.logprob)) for c in (pos.top_logprobs or [])] for pos in content]


@dataclass
class JudgeRequest:
    """One chat request. ``max_tokens`` / ``temperature`` / ``top_p`` replace the ``--judge.*`` values
    for this request when set; ``top_logprobs`` > 0 asks for the log-probabilities of that many
    candidate tokens at every generated position (AlpacaEval 2's annotator reads its verdict from them)."""

    system: str
    user: str
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_logprobs: int = 0

    @property
    def messages(self) -> List[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": self.user}
        ]


@dataclass
class Judgment:
    key: str
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    finish_reason: str = ""
    top_logprobs: Optional[TopLogprobs] = None


@dataclass
class JudgeStats:
    requests: int = 0
    from_cache: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Replies used but not cached: empty, or cut by the token limit.
    not_cached: int = 0
    # Replies that stopped at the token limit: --judge.max_tokens or the judge's context (log-probability
    # requests, cut on purpose, are not counted).
    cut_by_max_tokens: int = 0
    errors: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "requests_sent": self.requests,
            "from_cache": self.from_cache,
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "not_cached": self.not_cached,
            "cut_by_max_tokens": self.cut_by_max_tokens,
        }


class EmptyAnswer(Exception):
    """An HTTP 200 answer without a choice (``"choices": []``): a failed request, retried like a 5xx."""


class JudgeClient:
    """``judge.*`` settings (a :class:`~openrlhf.config.schema.JudgeConfig`) -> judgments."""

    def __init__(self, cfg, cache_path: str, log: Callable[[str], None] = print):
        require_package("openai", "the LLM judge (--judge.*)")
        self.cfg = cfg
        self.cache_path = cache_path
        self.log = log
        self.stats = JudgeStats()
        self._lock = threading.Lock()
        self._timeout_said = False
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        from openai import OpenAI

        # An endpoint without keys (a local vLLM server) takes any non-empty key.
        self._client = OpenAI(base_url=cfg.base_url, api_key=key or "EMPTY", timeout=cfg.timeout, max_retries=0)
        self._cache = self._load_cache()

    # ---- the cache ----------------------------------------------------------------------------
    def settings_of(self, req: JudgeRequest) -> dict:
        """The sampling settings sent with ``req``."""
        out = {
            "temperature": self.cfg.temperature if req.temperature is None else req.temperature,
            "max_tokens": self.cfg.max_tokens if req.max_tokens is None else req.max_tokens,
        }
        if req.top_p is not None:
            out["top_p"] = req.top_p
        if req.top_logprobs > 0:
            out.update(logprobs=True, top_logprobs=req.top_logprobs)
        return out

    def key_of(self, req: JudgeRequest) -> str:
        spec = json.dumps(
            [self.cfg.base_url.rstrip("/"), self.cfg.model, sorted(self.settings_of(req).items()), req.messages],
            ensure_ascii=False,
        )
        return hashlib.sha256(spec.encode("utf-8")).hexdigest()

    @staticmethod
    def cacheable(req: JudgeRequest, j: Judgment) -> bool:
        """An empty reply, or one cut by the token limit, is not kept: the next run asks again. (A
        log-probability request is cut on purpose: it is kept when it carries its log-probabilities.)"""
        if req.top_logprobs > 0:
            return bool(j.top_logprobs)
        return bool(j.text.strip()) and j.finish_reason != "length"

    def _load_cache(self) -> Dict[str, Judgment]:
        out: Dict[str, Judgment] = {}
        if not os.path.exists(self.cache_path):
            return out
        if repair_torn_tail(self.cache_path) == "dropped":
            self.log(f"judge: dropped a torn last line of {self.cache_path} (a killed run's unfinished write)")
        with open(self.cache_path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    lp = rec.get("top_logprobs")
                    out[rec["key"]] = Judgment(
                        rec["key"],
                        rec["text"],
                        rec.get("prompt_tokens", 0),
                        rec.get("completion_tokens", 0),
                        cached=True,
                        finish_reason=rec.get("finish_reason", ""),
                        top_logprobs=[[(t, float(v)) for t, v in pos] for pos in lp] if lp is not None else None,
                    )
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(
                        f"{self.cache_path}: line {n} is not a judgment written by this tool; "
                        "delete the file to judge again"
                    ) from None
        return out

    def _remember(self, j: Judgment) -> None:
        with self._lock:
            self._cache[j.key] = j
            rec = {
                "key": j.key,
                "model": self.cfg.model,
                "base_url": self.cfg.base_url,
                "text": j.text,
                "finish_reason": j.finish_reason,
                "prompt_tokens": j.prompt_tokens,
                "completion_tokens": j.completion_tokens,
            }
            if j.top_logprobs is not None:
                rec["top_logprobs"] = [[list(c) for c in pos] for pos in j.top_logprobs]
            append_jsonl(self.cache_path, [rec])

    # ---- requests ---------------------------------------------------------------------------------
    def _send(self, req: JudgeRequest, max_tokens: Optional[int] = None, retry_connection: bool = True) -> Judgment:
        import openai

        settings = self.settings_of(req)
        if max_tokens is not None:
            settings["max_tokens"] = max_tokens
        for attempt in range(self.cfg.max_retries + 1):
            try:
                resp = self._client.chat.completions.create(model=self.cfg.model, messages=req.messages, **settings)
                if not getattr(resp, "choices", None) or resp.choices[0].message is None:
                    raise EmptyAnswer('HTTP 200 without an answer ("choices": [])')
                usage = resp.usage
                choice = resp.choices[0]
                j = Judgment(
                    self.key_of(req),
                    choice.message.content or "",
                    getattr(usage, "prompt_tokens", 0) or 0,
                    getattr(usage, "completion_tokens", 0) or 0,
                    finish_reason=choice.finish_reason or "",
                    top_logprobs=_top_logprobs(choice),
                )
                with self._lock:
                    self.stats.requests += 1
                    self.stats.prompt_tokens += j.prompt_tokens
                    self.stats.completion_tokens += j.completion_tokens
                return j
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APIConnectionError,
                openai.APIStatusError,
                EmptyAnswer,
            ) as e:
                # 408 / 409 / 429 / 5xx, timeouts (a kind of connection error), dropped connections and answers
                # without a choice: try again; any other status (400, 404, ...) cannot get better.
                if isinstance(e, openai.AuthenticationError):
                    state = "is not set" if not os.environ.get(self.cfg.api_key_env or "") else "holds a key it refuses"
                    raise UserError(
                        f"--judge.api_key_env: the endpoint needs a key (HTTP 401) and {self.cfg.api_key_env} {state}"
                    ) from None
                status = getattr(e, "status_code", None)
                if isinstance(e, openai.APIStatusError) and status not in RETRY_STATUS and status < 500:
                    raise UserError(
                        f"--judge.model {self.cfg.model}: the endpoint {self.cfg.base_url} refused a "
                        f"request (HTTP {status}): {e.message}"
                    ) from None
                if isinstance(e, openai.APIConnectionError) and not retry_connection:
                    raise
                # A judge slower than --judge.timeout (a long --judge.max_tokens on a CPU) times out every time.
                slow = (
                    f"no answer within --judge.timeout {self.cfg.timeout:g} s (a slow judge writing up to "
                    f"--judge.max_tokens {settings['max_tokens']} tokens needs a larger --judge.timeout)"
                    if isinstance(e, openai.APITimeoutError)
                    else ""
                )
                if attempt == self.cfg.max_retries:
                    raise UserError(
                        f"--judge.base_url {self.cfg.base_url}: the request still failed after "
                        f"{attempt} retries ({slow or f'{type(e).__name__}: {e}'})"
                    ) from None
                with self._lock:
                    self.stats.retries += 1
                    say, self._timeout_said = bool(slow) and not self._timeout_said, self._timeout_said or bool(slow)
                if say:  # once per run: every request in flight may time out alike
                    self.log(f"judge: {slow}; retrying, up to --judge.max_retries {self.cfg.max_retries}")
                response = getattr(e, "response", None)
                time.sleep(retry_wait(attempt, getattr(response, "headers", None)))
        raise AssertionError("unreachable")

    def check(self, top_logprobs: int = 0) -> None:
        """One request before any work: a missing key, an unreachable endpoint or an unknown model
        is a clear error here. ``top_logprobs`` > 0: the request asks for log-probabilities as the real ones
        will, and an endpoint that answers without them is refused before any judgment is asked for."""
        import openai

        if (
            self.cfg.api_key_env
            and self.cfg.api_key_env != "OPENAI_API_KEY"
            and not os.environ.get(self.cfg.api_key_env)
        ):
            raise UserError(f"--judge.api_key_env: the environment variable {self.cfg.api_key_env} is not set")
        try:  # retried like any request on 429 / 5xx; an endpoint that is not there fails at once
            before = (self.stats.requests, self.stats.prompt_tokens, self.stats.completion_tokens)
            probe = JudgeRequest("", "Say OK.", top_logprobs=top_logprobs)
            j = self._send(probe, max_tokens=1, retry_connection=False)
            if top_logprobs > 0 and not j.top_logprobs:
                raise UserError(
                    f"--judge.base_url {self.cfg.base_url}: the endpoint answered without log-probabilities "
                    f"(asked: logprobs, top_logprobs {top_logprobs}); this task reads its verdicts from them "
                    "(vLLM's server gives them); nothing was judged"
                )
            with self._lock:  # not a judgment: not counted
                self.stats.requests, self.stats.prompt_tokens, self.stats.completion_tokens = before
        except openai.APIConnectionError as e:
            raise UserError(
                f"--judge.base_url {self.cfg.base_url}: the endpoint cannot be reached "
                f"({type(e).__name__}: {e}); start the judge server first"
            ) from None

    def judge(self, requests: Sequence[JudgeRequest], desc: str = "judge") -> List[Judgment]:
        """Judgments in the order of ``requests``: from the cache when there, else sent
        (``--judge.concurrency`` at a time) and appended to the cache as each arrives."""
        keys = [self.key_of(r) for r in requests]
        out: Dict[str, Judgment] = {}
        todo: Dict[str, JudgeRequest] = {}
        for k, r in zip(keys, requests, strict=True):
            if k in self._cache:
                out[k] = self._cache[k]
            else:
                todo.setdefault(k, r)
        self.stats.from_cache += sum(1 for k in keys if k in out)
        bar = tqdm(total=len(todo), desc=desc, unit="req", dynamic_ncols=True, disable=not todo)
        try:

            def one(req: JudgeRequest) -> Judgment:
                j = self._send(req)
                if self.cacheable(req, j):
                    self._remember(j)  # cached the moment it arrives, whatever happens to the others
                else:
                    with self._lock:
                        self.stats.not_cached += 1
                if req.top_logprobs == 0 and j.finish_reason == "length":
                    with self._lock:
                        self.stats.cut_by_max_tokens += 1
                return j

            pool = ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency))
            try:
                for j in pool.map(one, todo.values()):
                    out[j.key] = j
                    bar.update(1)
            except BaseException as e:
                # Ctrl-C or an error: send nothing more (requests already in flight finish and are cached).
                pool.shutdown(wait=False, cancel_futures=True)
                if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
                    raise Interrupted(
                        f"every verdict received so far is kept in {self.cache_path}; rerun the same "
                        "command to resume (only what is missing is asked; requests in flight at the "
                        "interrupt are sent again)"
                    ) from None
                raise
            pool.shutdown()
        finally:
            bar.close()
        return [out[k] for k in keys]
