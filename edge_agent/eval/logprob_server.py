"""A small OpenAI-compatible server that answers one-token chat completions with top log-probabilities from a
local scorer: the HTTP judge path tested end to end without llama.cpp's server, and a judge other hosts can share."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


class LogprobServer:
    """`with LogprobServer(scorer) as server: HttpScorer(server.url)`; binds 127.0.0.1 on a free port by default."""

    def __init__(self, scorer, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None):
        self.scorer = scorer
        self._lock = threading.Lock()  # one inference at a time: the engine is single-threaded
        self._api_key = api_key
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # stdlib's signature
                log.debug("%s " + fmt, self.address_string(), *args)

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if outer._api_key and self.headers.get("Authorization") != f"Bearer {outer._api_key}":
                    self._reply(401, {"error": {"message": "invalid API key", "type": "invalid_request_error"}})
                    return False
                return True

            def do_GET(self):  # stdlib's name
                if not self._authorized():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    self._reply(200, {"object": "list", "data": [{"id": outer.scorer.name, "object": "model"}]})
                else:
                    self._reply(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                if not self._authorized():
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._reply(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    turns = [(m["role"], m["content"]) for m in body["messages"]]
                    k = int(body.get("top_logprobs", 5))
                except (ValueError, KeyError, TypeError) as exc:
                    self._reply(400, {"error": {"message": f"bad request: {exc}", "type": "invalid_request_error"}})
                    return
                self._reply(200, outer.completion(turns, k, body.get("model")))

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def completion(self, turns: list[tuple[str, str]], k: int, model: str | None) -> dict:
        with self._lock:
            top = self.scorer.top_logprobs(turns, max(1, k))
        token, logprob = top[0]
        entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]
        return {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                "model": model or self.scorer.name,
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": token},
                             "logprobs": {"content": [{"token": token, "logprob": logprob,
                                                       "bytes": list(token.encode()), "top_logprobs": entries}]}}]}

    def start(self) -> LogprobServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="logprob-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> LogprobServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
