"""A local OpenAI-compatible chat-completions server (``POST /v1/chat/completions``).

Speaks the real wire format (protocols.md §8): bearer auth, JSON body with ``model`` and
``messages``, a ``chat.completion`` object back, ``{"error": {...}}`` on failure. Each test scripts
the answers: text content, a delay (to provoke the client's timeout), an HTTP error, or a body that
is not a completion.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ScriptedAnswer:
    content: str | None = None
    delay_s: float = 0.0
    status: int = 200
    raw_body: str | None = None  # sent verbatim instead of a completion
    dribble_s: float = 0.0  # pause between the body's bytes: slow overall, never silent long


@dataclass
class FakeChatCompletions:
    api_key: str = "sk-test-fake"
    answers: list[ScriptedAnswer] = field(default_factory=list)
    default: ScriptedAnswer = field(default_factory=lambda: ScriptedAnswer(content='{"spoken": "Sure."}'))
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeChatCompletions:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            # Headers and body go out in separate writes: without this the body waits ~40 ms for a delayed ACK.
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    return self._send(401, {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}})
                request = json.loads(body)
                fake.requests.append(request)
                answer = fake.answers.pop(0) if fake.answers else fake.default
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                if answer.raw_body is not None:
                    return self._send_raw(answer.status, answer.raw_body, answer.dribble_s)
                if answer.status >= 400:
                    return self._send(answer.status, {"error": {"message": "model overloaded", "type": "server_error"}})
                return self._send(200, dribble_s=answer.dribble_s, document={
                    "id": f"chatcmpl-{len(fake.requests)}", "object": "chat.completion", "created": int(time.time()),
                    "model": request.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.content,
                                                         "refusal": None}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                })

            def _send(self, status: int, document: dict, dribble_s: float = 0.0) -> None:
                self._send_raw(status, json.dumps(document), dribble_s)

            def _send_raw(self, status: int, text: str, dribble_s: float = 0.0) -> None:
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not dribble_s:
                        self.wfile.write(data)
                    for index in range(len(data) if dribble_s else 0):
                        self.wfile.write(data[index:index + 1])
                        self.wfile.flush()
                        time.sleep(dribble_s)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
