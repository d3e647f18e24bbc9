"""A simulated Bland API on 127.0.0.1: the tests' fake upstream and ``notifier simulate``.

It speaks Bland's wire format with its quirks (every field a string, ``""`` for an
unset start_time, epoch-millisecond ``timestamp``), checks the two auth headers like
the real API, and can be told to misbehave: scripted faults for tests, a random
error rate, added latency and an outage window for rehearsals.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from notifier.traffic import TrafficModel

#: Kinds of scripted failure, as the tests name them.
FAULTS = (
    "500",
    "503_html",
    "429",
    "timeout",  # no answer for `delay` seconds
    "stall",  # headers and half the body, then nothing for `delay` seconds
    "trickle",  # headers, then the body a byte every 50 ms for `delay` seconds
    "trickle_headers",  # the whole answer, headers included, a byte every 50 ms for `delay` seconds
    "reset",
    "truncated",
    "html_200",
    "data_null",
    "wrong_shape",
    "401",
)


def wire_call(
    call_id: str,
    status: str = "QUEUED",
    *,
    to: str = "+13105550100",
    from_: str = "+14155550100",
    created_ms: int | None = None,
    start_time: str = "",
    international: bool = False,
    objective: str = "Confirm the appointment",
    pathway_id: str = "",
    user_id: str = "user-1",
) -> dict[str, str]:
    """One entry exactly as Bland sends it."""
    created_ms = int(time.time() * 1000) if created_ms is None else created_ms
    return {
        "call_id": call_id,
        "user_id": user_id,
        "from": from_,
        "to": to,
        "objective": objective,
        "pathway_id": pathway_id,
        "start_time": start_time,
        "international": "true" if international else "false",
        "status": status,
        "timestamp": str(created_ms),
    }


@dataclass
class Fault:
    kind: str
    retry_after: str | None = None
    delay: float = 0.0


@dataclass
class _Shared:
    api_key: str
    org_id: str
    calls: list[Any] = field(default_factory=list)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    peers: set[tuple[str, int]] = field(default_factory=set)  # client (host, port) of each connection
    latency: float = 0.0
    details_latency: float = 0.0
    error_rate: float = 0.0
    outage: tuple[float, float] | None = None  # (start, end) in time.time()
    tick: Callable[[], None] | None = None
    rng: random.Random = field(default_factory=random.Random)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def active_body(self) -> bytes:
        """The answer to ``GET /v1/calls/active`` as it stands."""
        with self.lock:
            return json.dumps({"data": list(self.calls), "errors": None}).encode()


def trickle(out: Any, data: bytes, seconds: float) -> None:
    """Write ``data`` a byte every 50 ms, for at most ``seconds``: every read on the other
    end completes well within any read timeout, yet the answer never does."""
    until = time.monotonic() + seconds
    try:
        for byte in data:
            if time.monotonic() > until:
                return
            out.write(bytes([byte]))
            out.flush()
            time.sleep(0.05)
    except OSError:
        pass  # the client hung up


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stderr
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        shared = self.server.shared
        with shared.lock:
            shared.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            shared.peers.add(self.client_address[:2])
            fault = shared.faults.popleft() if shared.faults else None
            if shared.tick is not None:
                shared.tick()
            latency = shared.latency
            if self.path.startswith("/v1/calls/") and self.path.rstrip("/") != "/v1/calls/active":
                latency += shared.details_latency
        if latency:
            time.sleep(latency)
        if self.headers.get("authorization") != shared.api_key or self.headers.get("x-bland-org-id") != shared.org_id:
            fault = Fault("401")
        if fault is None and shared.error_rate and shared.rng.random() < shared.error_rate:
            fault = Fault(shared.rng.choice(["500", "503_html", "timeout"]), delay=2.0)
        if fault is None and shared.outage and shared.outage[0] <= time.time() < shared.outage[1]:
            fault = Fault("503_html")
        if fault is not None:
            self._fail(fault)
            return
        if self.path.rstrip("/") == "/v1/calls/active":
            self._send(200, shared.active_body())
        elif self.path.startswith("/v1/calls/"):
            call_id = self.path.removeprefix("/v1/calls/")
            with shared.lock:
                details = shared.details.get(call_id)
            if details is None:
                self._send(404, b'{"status":"error","message":"call not found"}')
            else:
                self._send(200, json.dumps(details).encode())
        else:
            self._send(404, b'{"status":"error","message":"not found"}')

    def _send(
        self, status: int, body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _fail(self, fault: Fault) -> None:
        kind = fault.kind
        if kind == "timeout":
            time.sleep(fault.delay or 5.0)
            self.close_connection = True
            return
        if kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
            return
        if kind == "stall":
            body = self.server.shared.active_body()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(fault.delay or 5.0)
            self.close_connection = True
            return
        if kind in ("trickle", "trickle_headers"):
            body = b'{"data": [], "errors": null}' + b" " * 10_000
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n".encode()
                + b"x-padding: "
                + b"x" * 10_000
                + b"\r\n\r\n"
            )
            if kind == "trickle":
                self.wfile.write(head)
            trickle(self.wfile, body if kind == "trickle" else head + body, fault.delay or 5.0)
            self.close_connection = True
            return
        if kind == "truncated":
            body = b'{"data": [{"call_id": "abc", "status": "QUE'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        responses = {
            "500": (500, b'{"status":"error","message":"internal error"}', "application/json", {}),
            "503_html": (503, b"<html><body>503 Service Unavailable</body></html>", "text/html", {}),
            "429": (
                429,
                b'{"status":"error","message":"rate limited"}',
                "application/json",
                {"retry-after": fault.retry_after or "2"},
            ),
            "html_200": (200, b"<!doctype html><html><body>Maintenance</body></html>", "text/html", {}),
            "data_null": (200, b'{"data": null, "errors": [{"message": "boom"}]}', "application/json", {}),
            "wrong_shape": (200, b'{"calls": []}', "application/json", {}),
            "401": (401, b'{"status":"error","message":"Invalid API key"}', "application/json", {}),
        }
        status, body, ctype, headers = responses[kind]
        self._send(status, body, ctype, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (a killed daemon) is normal here, not news."""

    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], shared: _Shared) -> None:
        super().__init__(address, _Handler)
        self.shared = shared


class BlandSimulator:
    """A Bland API on 127.0.0.1 in a background thread. Thread-safe setters."""

    def __init__(
        self, port: int = 0, api_key: str | None = None, org_id: str | None = None, seed: int | None = None
    ) -> None:
        self.shared = _Shared(
            api_key=api_key or f"sim-key-{uuid.uuid4().hex[:16]}",
            org_id=org_id or f"sim-org-{uuid.uuid4().hex[:8]}",
            rng=random.Random(seed),
        )
        self._server = _Server(("127.0.0.1", port), self.shared)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def api_key(self) -> str:
        return self.shared.api_key

    @property
    def org_id(self) -> str:
        return self.shared.org_id

    def start(self) -> BlandSimulator:
        self._thread = threading.Thread(target=self._server.serve_forever, name="bland-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> BlandSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        self._server.serve_forever()

    # -- what the API answers -----------------------------------------------------------

    def set_calls(self, calls: list[Any]) -> None:
        """Replace the active-call list (entries may be malformed on purpose)."""
        with self.shared.lock:
            self.shared.calls = list(calls)

    def set_details(self, call_id: str, details: dict[str, Any]) -> None:
        with self.shared.lock:
            self.shared.details[call_id] = details

    def fail_next(self, kind: str, count: int = 1, *, retry_after: str | None = None, delay: float = 0.0) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        with self.shared.lock:
            self.shared.faults.extend(Fault(kind, retry_after, delay) for _ in range(count))

    def configure(
        self,
        *,
        latency: float | None = None,
        details_latency: float | None = None,
        error_rate: float | None = None,
        outage: tuple[float, float] | None = None,
    ) -> None:
        with self.shared.lock:
            if latency is not None:
                self.shared.latency = latency
            if details_latency is not None:
                self.shared.details_latency = details_latency
            if error_rate is not None:
                self.shared.error_rate = error_rate
            if outage is not None:
                self.shared.outage = outage

    def set_tick(self, tick: Callable[[], None] | None) -> None:
        """Called under the lock before each answer (the traffic model advances here)."""
        with self.shared.lock:
            self.shared.tick = tick

    def drive(self, model: TrafficModel, clock: Callable[[], float] = time.time) -> None:
        """Answer from a traffic model, advanced to ``clock()`` on every request."""
        shared = self.shared

        def tick() -> None:  # runs with shared.lock held
            now = clock()
            model.tick(now)
            shared.calls = model.active(now)
            shared.details.update(model.ended)
            model.ended.clear()

        self.set_tick(tick)

    @property
    def requests(self) -> list[tuple[str, dict[str, str]]]:
        with self.shared.lock:
            return list(self.shared.requests)

    @property
    def connections(self) -> int:
        """How many TCP connections clients have made (a keep-alive client: one)."""
        with self.shared.lock:
            return len(self.shared.peers)
