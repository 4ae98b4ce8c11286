"""A model behind an OpenAI-compatible server (vLLM's ``vllm serve``): where it answers (:class:`Endpoint`), and
one client for it with retries and backoff (:class:`ServedClient`), shared by the served log-prob source
(:mod:`openrlhf.logps.served`) and the served generation backend (:mod:`openrlhf.generation.served_backend`)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from openrlhf.utils.errors import UserError, require_package
from openrlhf.utils.retry import RETRY_STATUS, retry_wait


@dataclass(frozen=True)
class Endpoint:
    """Where a served model answers, and how to ask (``flag``: the flag that named the endpoint)."""

    base_url: str
    model: str
    api_key_env: str = ""
    concurrency: int = 8
    max_retries: int = 5
    timeout: float = 600.0
    flag: str = "--teacher.base_url"

    @classmethod
    def of(cls, section, flag: str) -> Optional["Endpoint"]:
        """The endpoint a config section (``--teacher.*``) names, None when it names none."""
        if not getattr(section, "base_url", ""):
            return None
        return cls(
            section.base_url,
            section.model,
            section.api_key_env,
            section.concurrency,
            section.max_retries,
            section.timeout,
            flag,
        )


class ServedClient:
    """Requests to one :class:`Endpoint` (``openai`` client, retries with backoff)."""

    def __init__(self, endpoint: Endpoint, log: Callable[[str], None] = print):
        require_package("openai", f"a served model ({endpoint.flag})")
        from openai import OpenAI

        self.endpoint = endpoint
        self.log = log
        key = os.environ.get(endpoint.api_key_env, "") if endpoint.api_key_env else ""
        self._client = OpenAI(
            base_url=endpoint.base_url, api_key=key or "EMPTY", timeout=endpoint.timeout, max_retries=0
        )
        self._info: Optional[dict] = None
        self._lock = threading.Lock()
        self.retries = 0

    # ---- what is served -------------------------------------------------------------------------
    def info(self) -> dict:
        """id, root and max_model_len of the served model (``/v1/models``); a clear error when the server
        cannot be reached or does not serve ``model``."""
        if self._info is None:
            listed = self._retrying(lambda: self._client.models.list().data, connect_retries=False)
            names = [m.id for m in listed]
            found = [m for m in listed if m.id == self.endpoint.model]
            if not found:
                raise UserError(
                    f"{self.endpoint.flag} {self.endpoint.base_url} serves {names}, not {self.endpoint.model!r} "
                    f"({self.endpoint.flag.replace('base_url', 'model')})"
                )
            extra = found[0].model_extra or {}
            self._info = {
                "id": found[0].id,
                "root": extra.get("root") or found[0].id,
                "max_model_len": extra.get("max_model_len"),
            }
        return self._info

    # ---- requests ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def completion(self, stop: Optional[threading.Event] = None, **request):
        """One ``/v1/completions`` answer of the served model for ``request`` (retried as :meth:`_retrying`
        says); ``stop`` set: no (further) request is sent."""
        return self._retrying(lambda: self._client.completions.create(model=self.endpoint.model, **request), stop=stop)

    def _retrying(self, fn, connect_retries: bool = True, stop: Optional[threading.Event] = None):
        """``fn()``, tried again on 408 / 409 / 429 / 5xx, timeouts and dropped connections (backoff); any
        other refusal, or an endpoint that cannot be reached at the first request, is a clear error."""
        import openai

        ep = self.endpoint
        for attempt in range(ep.max_retries + 1):
            if stop is not None and stop.is_set():
                raise Stopped()
            try:
                return fn()
            except openai.APIStatusError as e:
                status = e.status_code
                if status == 401:
                    raise UserError(
                        f"{ep.flag} {ep.base_url}: the server needs a key (HTTP 401); set the "
                        f"environment variable named by {ep.flag.replace('base_url', 'api_key_env')}"
                    ) from None
                if status not in RETRY_STATUS and status < 500:
                    raise UserError(
                        f"{ep.flag} {ep.base_url}: the server refused a request for {ep.model} "
                        f"(HTTP {status}): {e.message}"
                    ) from None
                error: Exception = e
            except openai.APIConnectionError as e:  # timeouts included
                if not connect_retries:
                    raise UserError(
                        f"{ep.flag} {ep.base_url}: the server cannot be reached ({type(e).__name__}: "
                        f"{e}); start it first"
                    ) from None
                error = e
            if attempt == ep.max_retries:
                raise UserError(
                    f"{ep.flag} {ep.base_url}: a request still failed after {attempt} retries "
                    f"({type(error).__name__}: {error}); what is done is kept: the same command resumes"
                ) from None
            with self._lock:
                self.retries += 1
            response = getattr(error, "response", None)
            wait = retry_wait(attempt, getattr(response, "headers", None))
            if stop is not None:
                stop.wait(wait)  # ends at once when the scoring stops
            else:
                time.sleep(wait)
        raise AssertionError("unreachable")


class Stopped(Exception):
    """A request not sent because the scoring stopped (another request failed, or an interrupt)."""
