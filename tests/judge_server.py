"""A small OpenAI-compatible chat-completions server on loopback for the judge tests: real HTTP, real
``openai`` client on the other side; its answers come from a Python function, and it can fail the
first requests with 429 / 500 (with response headers such as Retry-After) or require an API key, to
exercise retries and errors.

The function gets the request's messages and returns the reply text, or a dict with ``content`` and
optionally ``finish_reason`` and ``top_logprobs`` (per generated position, a list of (token, logprob)),
sent back the way an OpenAI endpoint sends ``logprobs`` when the request asks for them."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional


class FakeJudge:
    def __init__(
        self,
        answer: Callable[[List[dict]], str],
        model: str = "fake-judge",
        fail_first: int = 0,
        fail_status: int = 429,
        api_key: Optional[str] = None,
        fail_headers: Optional[dict] = None,
        empty_first: int = 0,
    ):
        self.answer, self.model = answer, model
        self.empty_first, self.emptied = empty_first, 0  # the first answers: HTTP 200 with "choices": []
        self.fail_first, self.fail_status, self.api_key = fail_first, fail_status, api_key
        self.fail_headers = dict(fail_headers or {})
        self.requests: List[List[dict]] = []  # every completed chat request's messages
        self.bodies: List[dict] = []  # ... and its whole body (sampling settings)
        self.fail_times: List[float] = []  # when each failed request was answered (time.monotonic)
        self.failed = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, obj: dict, headers: Optional[dict] = None) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                data = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "auth", "code": 401}})
                if data.get("model") != owner.model:
                    return self._send(
                        404,
                        {
                            "error": {
                                "message": f"The model `{data.get('model')}` does not exist.",
                                "type": "NotFoundError",
                                "code": 404,
                            }
                        },
                    )
                with owner._lock:
                    if owner.failed < owner.fail_first:
                        owner.failed += 1
                        owner.fail_times.append(time.monotonic())
                        return self._send(
                            owner.fail_status,
                            {"error": {"message": "try later", "code": owner.fail_status}},
                            owner.fail_headers,
                        )
                with owner._lock:
                    empty = owner.emptied < owner.empty_first
                    owner.emptied += int(empty)
                if empty:
                    return self._send(
                        200, {"id": "x", "object": "chat.completion", "created": 0, "model": owner.model, "choices": []}
                    )
                reply = owner.answer(data["messages"])
                if not isinstance(reply, dict):
                    reply = {"content": reply}
                with owner._lock:
                    owner.requests.append(data["messages"])
                    owner.bodies.append(data)
                choice = {
                    "index": 0,
                    "finish_reason": reply.get("finish_reason", "stop"),
                    "message": {"role": "assistant", "content": reply["content"]},
                }
                if data.get("logprobs") and reply.get("top_logprobs") is not None:
                    k = int(data.get("top_logprobs") or 0)
                    choice["logprobs"] = {
                        "content": [
                            {
                                "token": pos[0][0] if pos else "",
                                "logprob": pos[0][1] if pos else 0.0,
                                "bytes": None,
                                "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in pos[:k]],
                            }
                            for pos in reply["top_logprobs"]
                        ]
                    }
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": owner.model,
                        "choices": [choice],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeJudge":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
