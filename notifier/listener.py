"""The optional HTTP listener (``[http] listen``): ``/metrics``, ``/healthz``, and the
console and JSON API (``notifier.web``) on every other path.

A small WSGI server on wsgiref in background threads: scrapes and health checks never
wait for the event loop, and a hung loop still answers (the watchdog handles that).
Every response carries strict security headers: the console runs no inline script,
cannot be framed, and is never shared with other origins.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import msgspec
from prometheus_client import make_wsgi_app

from notifier.detect import DetectState
from notifier.metrics import Metrics
from notifier.model import iso


def health(state: DetectState | None, now: float, unreachable_after: float) -> tuple[int, dict[str, Any]]:
    """SPEC: 200 while the source is reachable, 503 from the moment it counts as
    unreachable: failing for ``unreachable_after``, even before the next poll says so."""
    if state is None or not state.source.ever_succeeded and state.source.failures == 0:
        return 200, {"status": "starting"}
    src = state.source
    unreachable = src.unreachable_at(now, unreachable_after)
    body: dict[str, Any] = {
        "status": "unreachable" if unreachable else ("degraded" if src.failures else "ok"),
        "last_successful_poll": iso(src.last_success),
        "consecutive_failures": src.failures,
        "active_calls": len(state.calls),
    }
    if src.failures:
        body["failing_since"] = iso(src.failing_since)
        body["last_error"] = src.last_error
    return (503 if unreachable else 200), body


@dataclass(frozen=True)
class Standing:
    """What the daemon is right now, for ``/healthz``: its role, each source it polls
    (state and ``unreachable_after``; none on a standby), and the store's trouble."""

    role: str  # leader | standby
    sources: Mapping[str, tuple[DetectState | None, float]] = field(default_factory=dict)
    store_error: str | None = None
    leader: str | None = None  # who leads, as last read


def daemon_health(standing: Standing, now: float) -> tuple[int, dict[str, Any]]:
    """SPEC: 503 while any source is unreachable or the store cannot be used, on leader
    and standby alike; a healthy standby answers 200."""
    sources = {name: health(state, now, after) for name, (state, after) in standing.sources.items()}
    body: dict[str, Any] = {"role": standing.role}
    if standing.leader is not None:
        body["leader"] = standing.leader
    if standing.store_error is not None:
        status, code = "store unavailable", 503
        body["store"] = standing.store_error
    elif any(code == 503 for code, _ in sources.values()):
        status, code = "unreachable", 503
    elif standing.role == "standby":
        status, code = "standby", 200
    else:
        states = {detail["status"] for _, detail in sources.values()}
        status = next((s for s in ("degraded", "starting") if s in states), "ok")
        code = 200
    body = {"status": status, **body, "sources": {name: detail for name, (_, detail) in sources.items()}}
    return code, body


class ListenerError(Exception):
    """The listener cannot start (address in use, no permission); said plainly."""


#: Connections served at once; more are closed as they arrive. Scrapes and health
#: checks are short, and the console takes a few slots at most (``web.WEB_CONCURRENCY``):
#: a flood cannot cost more threads.
MAX_CONNECTIONS = 16
#: A connection that has not sent a whole request line and headers within this long
#: is dropped, however slowly it trickles them (a half-sent request).
IDLE_TIMEOUT = 5.0


class _Server(WSGIServer):
    """A thread per connection, at most MAX_CONNECTIONS: one per connection keeps a slow
    client from delaying the others, the bound keeps a flood from exhausting the
    process's tasks (the Bland client and every target need threads too)."""

    request_queue_size = 32

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: the client retries, nothing piles up
            return
        try:
            threading.Thread(target=self._serve, args=(request, client_address), daemon=True).start()
        except RuntimeError:  # no thread to be had: drop this connection, not the process
            self._slots.release()
            self.shutdown_request(request)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away or timed out is not worth a traceback on stderr


class _Deadline:
    """The request's reader, held to one deadline for the request line and headers:
    the socket's own timeout applies to each read, which a trickle of bytes resets."""

    def __init__(self, rfile: Any, connection: socket.socket, seconds: float) -> None:
        self._rfile, self._connection = rfile, connection
        self._deadline = time.monotonic() + seconds

    def readline(self, limit: int = -1) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's headers took too long")
        self._connection.settimeout(remaining)
        return self._rfile.readline(limit)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rfile, name)


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT

    def handle(self) -> None:
        self.rfile = _Deadline(self.rfile, self.connection, IDLE_TIMEOUT)  # type: ignore[assignment]
        super().handle()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.connection.settimeout(IDLE_TIMEOUT)  # the body: each read within the idle timeout again
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        pass


def is_loopback(host: str) -> bool:
    """Whether a listen host or a Host header's name stays on this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def split_listen(listen: str) -> tuple[str, int]:
    """``[::1]:9464`` -> (``::1``, 9464); the config has checked the form."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def probe(listen: str) -> OSError | None:
    """Whether ``listen`` could be bound now (for ``check``): bound and let go at once."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            sock.bind((host, port))
    except OSError as exc:
        return exc
    return None


class _Server6(_Server):
    address_family = socket.AF_INET6


SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Listener:
    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        standing: Callable[[], Standing],
        clock: Callable[[], float],
        web: WSGIApp | None = None,
    ) -> None:
        self._host, port = split_listen(listen)
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._standing = standing
        self._clock = clock
        self._web = web
        try:
            server_class = _Server6 if ":" in self._host else _Server
            self._server = make_server(
                self._host, port, self._app, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ListenerError(f"http.listen: cannot listen on {listen}: {exc.strerror}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-listener", daemon=True)

    @property
    def address(self) -> str:
        """host:port as bound (the port is the real one when ``listen`` asked for 0)."""
        host, port = self._host, self._server.server_port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def secured(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, [*headers, *SECURITY_HEADERS], *exc_info)

        path = environ.get("PATH_INFO", "")
        if self._web is not None and path not in ("/metrics", "/healthz"):
            return self._web(environ, secured)
        return self._own(path, environ, secured)

    def _own(self, path: str, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"only GET and HEAD\n"]
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            status, body = daemon_health(self._standing(), self._clock())
            payload = msgspec.json.encode(body)
            start_response(
                f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
                [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
            )
            return [payload]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]
