"""The one client every judged evaluation uses: an OpenAI-compatible chat-completions endpoint
(``vllm serve`` / ``python -m vllm.entrypoints.openai.api_server`` on a GPU, a hosted API), with
parallel requests, retries with backoff, a JSONL cache of every judgment and token accounting.

The cache (``judge_cache.jsonl`` in the output folder unless told otherwise) holds one line per
judgment, keyed by a hash of the judge model, the sampling settings and the full prompt (system +
user message): a run started again, after a kill or with more candidates, asks only for what is not
cached (requests in flight at a kill are sent again; no verdict is lost or written twice).
Lines are appended and fsynced one by one, and a last line torn by a kill is repaired first.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from openrlhf.utils.errors import UserError, require_package


@dataclass
class JudgeRequest:
    system: str
    user: str


@dataclass
class Judgment:
    key: str
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


@dataclass
class JudgeStats:
    requests: int = 0
    from_cache: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"requests_sent": self.requests, "from_cache": self.from_cache, "retries": self.retries,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


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
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        from openai import OpenAI

        # An endpoint without keys (a local vLLM server) takes any non-empty key.
        self._client = OpenAI(base_url=cfg.base_url, api_key=key or "EMPTY", timeout=cfg.timeout, max_retries=0)
        self._cache = self._load_cache()

    # ---- the cache ----------------------------------------------------------------------------
    def key_of(self, req: JudgeRequest) -> str:
        spec = json.dumps([self.cfg.model, self.cfg.temperature, self.cfg.max_tokens, req.system, req.user],
                          ensure_ascii=False)
        return hashlib.sha256(spec.encode("utf-8")).hexdigest()

    def _load_cache(self) -> Dict[str, Judgment]:
        from openrlhf.utils.jsonl import repair_torn_tail

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
                    out[rec["key"]] = Judgment(rec["key"], rec["text"], rec.get("prompt_tokens", 0),
                                               rec.get("completion_tokens", 0), cached=True)
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{self.cache_path}: line {n} is not a judgment written by this tool; "
                                    "delete the file to judge again") from None
        return out

    def _remember(self, j: Judgment) -> None:
        from openrlhf.utils.jsonl import append_jsonl

        with self._lock:
            self._cache[j.key] = j
            append_jsonl(self.cache_path, [{"key": j.key, "model": self.cfg.model, "text": j.text,
                                            "prompt_tokens": j.prompt_tokens,
                                            "completion_tokens": j.completion_tokens}])

    # ---- requests ---------------------------------------------------------------------------------
    def _send(self, req: JudgeRequest, max_tokens: Optional[int] = None, retry_connection: bool = True) -> Judgment:
        import openai

        messages = ([{"role": "system", "content": req.system}] if req.system else []) + \
            [{"role": "user", "content": req.user}]
        delay = 1.0
        for attempt in range(self.cfg.max_retries + 1):
            try:
                resp = self._client.chat.completions.create(model=self.cfg.model, messages=messages,
                                                            temperature=self.cfg.temperature,
                                                            max_tokens=max_tokens or self.cfg.max_tokens)
                if not getattr(resp, "choices", None) or resp.choices[0].message is None:
                    raise EmptyAnswer('HTTP 200 without an answer ("choices": [])')
                usage = resp.usage
                j = Judgment(self.key_of(req), resp.choices[0].message.content or "",
                             getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)
                with self._lock:
                    self.stats.requests += 1
                    self.stats.prompt_tokens += j.prompt_tokens
                    self.stats.completion_tokens += j.completion_tokens
                return j
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError, EmptyAnswer) as e:
                # 429, 5xx, timeouts (a kind of connection error), dropped connections and answers without a
                # choice: try again.
                if isinstance(e, openai.APIConnectionError) and not retry_connection:
                    raise
                if attempt == self.cfg.max_retries:
                    raise UserError(f"--judge.base_url {self.cfg.base_url}: the request still failed after "
                                    f"{attempt} retries ({type(e).__name__}: {e})") from None
                with self._lock:
                    self.stats.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
            except openai.AuthenticationError:
                state = "is not set" if not os.environ.get(self.cfg.api_key_env or "") else "holds a key it refuses"
                raise UserError(f"--judge.api_key_env: the endpoint needs a key (HTTP 401) and {self.cfg.api_key_env} "
                                f"{state}") from None
            except openai.APIStatusError as e:  # 400 / 404 ...: retrying cannot help
                raise UserError(f"--judge.model {self.cfg.model}: the endpoint {self.cfg.base_url} refused a request "
                                f"(HTTP {e.status_code}): {e.message}") from None
        raise AssertionError("unreachable")

    def check(self) -> None:
        """One request before any work: a missing key, an unreachable endpoint or an unknown model
        is a clear error here."""
        import openai

        if self.cfg.api_key_env and self.cfg.api_key_env != "OPENAI_API_KEY" and not os.environ.get(self.cfg.api_key_env):
            raise UserError(f"--judge.api_key_env: the environment variable {self.cfg.api_key_env} is not set")
        try:  # retried like any request on 429 / 5xx; an endpoint that is not there fails at once
            before = (self.stats.requests, self.stats.prompt_tokens, self.stats.completion_tokens)
            self._send(JudgeRequest("", "Say OK."), max_tokens=1, retry_connection=False)
            with self._lock:  # not a judgment: not counted
                self.stats.requests, self.stats.prompt_tokens, self.stats.completion_tokens = before
        except openai.APIConnectionError as e:
            raise UserError(f"--judge.base_url {self.cfg.base_url}: the endpoint cannot be reached "
                            f"({type(e).__name__}: {e}); start the judge server first") from None

    def judge(self, requests: Sequence[JudgeRequest], desc: str = "judge") -> List[Judgment]:
        """Judgments in the order of ``requests``: from the cache when there, else sent
        (``--judge.concurrency`` at a time) and appended to the cache as each arrives."""
        from tqdm import tqdm

        keys = [self.key_of(r) for r in requests]
        out: Dict[str, Judgment] = {}
        todo: Dict[str, JudgeRequest] = {}
        for k, r in zip(keys, requests):
            if k in self._cache:
                out[k] = self._cache[k]
            else:
                todo.setdefault(k, r)
        self.stats.from_cache += sum(1 for k in keys if k in out)
        bar = tqdm(total=len(todo), desc=desc, unit="req", dynamic_ncols=True, disable=not todo)
        try:
            def one(req: JudgeRequest) -> Judgment:
                j = self._send(req)
                self._remember(j)  # cached the moment it arrives, whatever happens to the others
                return j

            pool = ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency))
            try:
                for j in pool.map(one, todo.values()):
                    out[j.key] = j
                    bar.update(1)
            except BaseException:
                # Ctrl-C or an error: send nothing more (requests already in flight finish and are cached).
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
        finally:
            bar.close()
        return [out[k] for k in keys]
