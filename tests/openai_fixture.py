"""A real local HTTP server speaking the OpenAI chat completions protocol, serving written answers.

Only a paid LLM API may be faked, and only by a server that speaks its protocol on 127.0.0.1: the
official `openai` SDK talks to it over a real socket (no patched client). `script` lists what the
next requests get: "ok", an HTTP status (429, 500), "timeout" (answer after `delay` seconds),
"bad-json" (a body that is not JSON) or "wrong-model". Every request is counted and kept.
Run it by hand with `python -m tests.openai_fixture ANSWER_FILE MODEL [PORT]`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FIXED_CREATED = 1764720000  # a fixed timestamp: the same answer gives the same bytes


class FixtureServer:
    """Serve `content` as the assistant's answer from `model` on 127.0.0.1 (port 0: any free port)."""

    def __init__(self, content: str, model: str, *, api_key: str = "sk-fixture-key", port: int = 0,
                 script: list[Any] | None = None, delay: float = 2.0) -> None:
        self.content, self.model, self.api_key, self.delay = content, model, api_key, delay
        self.script = list(script or [])
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        fixture = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fixture.requests.append(json.loads(body or b"{}"))
                fixture.headers.append(dict(self.headers))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": "not found"}})
                if self.headers.get("Authorization") != f"Bearer {fixture.api_key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
                action = fixture.script.pop(0) if fixture.script else "ok"
                if isinstance(action, int):
                    return self._send(action, {"error": {"message": f"scripted {action}", "type": "server_error"}})
                if action == "timeout":
                    time.sleep(fixture.delay)
                if action == "bad-json":
                    return self._raw(200, b"{this is not json")
                model = "some-other-model" if action == "wrong-model" else fixture.model
                prompt = sum(len(str(m.get("content", ""))) for m in fixture.requests[-1].get("messages", []))
                completion = {"id": "chatcmpl-local-fixture", "object": "chat.completion", "created": FIXED_CREATED,
                              "model": model, "system_fingerprint": "local-fixture",
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": fixture.content}}],
                              "usage": {"prompt_tokens": prompt // 4, "completion_tokens": len(fixture.content) // 4,
                                        "total_tokens": prompt // 4 + len(fixture.content) // 4}}
                return self._send(200, completion)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                self._raw(status, json.dumps(payload).encode())

            def _raw(self, status: int, data: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FixtureServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    answer, model = open(sys.argv[1], encoding="utf-8").read(), sys.argv[2]
    with FixtureServer(answer, model, port=int(sys.argv[3]) if len(sys.argv) > 3 else 0) as fixture:
        print(fixture.base_url, flush=True)
        threading.Event().wait()
