"""Real receivers on 127.0.0.1: a Standard Webhooks consumer and a Slack stand-in."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifier import simulator


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool | None  # None: the receiver has no secret
    error: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _State:
    secret: str | None
    received: list[Received] = field(default_factory=list)
    status: int = 200
    statuses: list[int] = field(default_factory=list)  # consumed first, then `status`
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    trickle: float = 0.0  # seconds of sending the reply a byte every 50 ms
    reply: bytes = b'{"ok":true}'
    lock: threading.Lock = field(default_factory=threading.Lock)
    now: float | None = None  # the consumer's clock for signature age checks


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        state = self.server.state
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if len(body) < length:  # the sender died mid-request: nothing was delivered
            self.close_connection = True
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified, error = None, None
        if state.secret is not None:
            try:
                hook = Webhook(state.secret)
                if state.now is not None:  # verify against the test's clock, as a consumer at that time would
                    ts = int(headers.get("webhook-timestamp", "0"))
                    if abs(state.now - ts) > 300:
                        raise WebhookVerificationError("Message timestamp too old")
                    hook._Webhook__verify_timestamp = (  # type: ignore[attr-defined]
                        lambda header: datetime.fromtimestamp(float(header), tz=UTC)
                    )
                hook.verify(body, headers)
                verified = True
            except WebhookVerificationError as exc:
                verified, error = False, str(exc)
        with state.lock:
            state.received.append(Received(self.path, headers, body, verified, error))
            status = state.statuses.pop(0) if state.statuses else state.status
            hang, trickle, extra, payload = state.hang, state.trickle, dict(state.headers), state.reply
        if hang:
            time.sleep(hang)
        if verified is False:
            status = 401
        if trickle:
            payload += b" " * int(trickle * 20)
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if trickle:
            simulator.trickle(self.wfile, payload, trickle)
            self.close_connection = True
        else:
            self.wfile.write(payload)

    do_GET = do_POST  # a heartbeat ping: recorded the same way, with an empty body  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (a killed daemon) is normal here, not news."""

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class Receiver:
    """An HTTP receiver on loopback that verifies Standard Webhooks signatures."""

    def __init__(self, secret: str | None = None) -> None:
        self.state = _State(secret)
        self._server = _Server(self.state)

    def __enter__(self) -> Receiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks/bland"

    def set_clock(self, now: float | None) -> None:
        """Judge signature age against this time (the test's clock) instead of the wall clock."""
        with self.state.lock:
            self.state.now = now

    def respond(
        self,
        status: int = 200,
        *,
        then: list[int] | None = None,
        headers: dict[str, str] | None = None,
        hang: float = 0.0,
        trickle: float = 0.0,
        reply: bytes = b'{"ok":true}',
    ) -> None:
        with self.state.lock:
            self.state.reply = reply
            self.state.status = status
            self.state.statuses = list(then or [])
            self.state.headers = dict(headers or {})
            self.state.hang = hang
            self.state.trickle = trickle

    @property
    def received(self) -> list[Received]:
        with self.state.lock:
            return list(self.state.received)
