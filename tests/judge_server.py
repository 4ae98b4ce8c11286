"""A small OpenAI-compatible chat-completions server on loopback for the judge tests: real HTTP, real
``openai`` client on the other side; its answers come from a Python function, and it can fail the
first requests with 429 / 500 or require an API key, to exercise retries and errors."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional


class FakeJudge:
    def __init__(self, answer: Callable[[List[dict]], str], model: str = "fake-judge", fail_first: int = 0,
                 fail_status: int = 429, api_key: Optional[str] = None, empty_first: int = 0):
        self.answer, self.model = answer, model
        self.empty_first, self.emptied = empty_first, 0  # the first answers: HTTP 200 with "choices": []
        self.fail_first, self.fail_status, self.api_key = fail_first, fail_status, api_key
        self.requests: List[List[dict]] = []  # every completed chat request's messages
        self.failed = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                data = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "auth", "code": 401}})
                if data.get("model") != owner.model:
                    return self._send(404, {"error": {"message": f"The model `{data.get('model')}` does not exist.",
                                                      "type": "NotFoundError", "code": 404}})
                with owner._lock:
                    if owner.failed < owner.fail_first:
                        owner.failed += 1
                        return self._send(owner.fail_status, {"error": {"message": "try later", "code": owner.fail_status}})
                with owner._lock:
                    empty = owner.emptied < owner.empty_first
                    owner.emptied += int(empty)
                if empty:
                    return self._send(200, {"id": "x", "object": "chat.completion", "created": 0,
                                            "model": owner.model, "choices": []})
                text = owner.answer(data["messages"])
                with owner._lock:
                    owner.requests.append(data["messages"])
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": owner.model,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeJudge":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
