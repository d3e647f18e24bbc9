"""A Bland-like API and a webhook receiver, each in its own process, so that their CPU
(and the GIL) never count against the daemon being measured.

Each request advances the campaign one step (1 % arrivals, departures and starts)
unless ``steady`` is set, and answers with the whole active list.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from benchmarks.bodies import Campaign


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A daemon stopped mid-answer hangs up on us: normal here, not news."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass


def _listen(handler: type[_Handler], port_out: Any) -> None:
    server = _Server(("127.0.0.1", 0), handler)
    port_out.put(server.server_address[1])
    server.serve_forever()


class _Process:
    """``target(port_queue, *args)`` in a fresh interpreter; returns once it listens."""

    def __init__(self, target: Any, *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        ports = context.Queue()
        self.process = context.Process(target=target, args=(ports, *args), daemon=True)
        self.process.start()
        self.port = ports.get(timeout=120)

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)


API_KEY = "bench-key"
ORG_ID = "bench-org"


def _serve(port_out: Any, size: int, steady: bool, ahead: int) -> None:
    campaign = Campaign(size)
    lock = threading.Lock()
    state = {"body": campaign.body()}
    # ``ahead``: the next answers made before listening, so that making them costs no
    # CPU while the daemon is measured (several servers share the daemon's cores).
    made: list[bytes] = []
    for _ in range(ahead):
        campaign.step()
        made.append(campaign.body())

    class Handler(_Handler):
        def do_GET(self) -> None:  # noqa: N802
            with lock:
                if made:
                    state["body"] = made.pop(0)
                elif not steady:
                    campaign.step()
                    state["body"] = campaign.body()
                body = state["body"]
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802  (POST /calls/<id>: a call arrives upstream now)
            with lock:
                campaign.add_named(self.path.rsplit("/", 1)[1])
                state["body"] = campaign.body()
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

    _listen(Handler, port_out)


class BenchServer(_Process):
    def __init__(self, size: int, steady: bool = False, ahead: int = 0) -> None:
        super().__init__(_serve, size, steady, ahead)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_call(self, call_id: str) -> None:
        """Returns once the call is in the list the API answers with."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.base_url}/calls/{call_id}", method="POST")).read()


def _receive(port_out: Any, arrivals: Any) -> None:
    class Handler(_Handler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            call = body["data"].get("call") or {}
            arrivals.put((call.get("call_id", ""), time.monotonic()))  # CLOCK_MONOTONIC: system-wide
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

    _listen(Handler, port_out)


class Receiver(_Process):
    """Webhook receiver in another process; ``arrivals`` maps call_id -> first arrival time."""

    def __init__(self) -> None:
        self._queue: Any = multiprocessing.get_context("spawn").Queue()
        super().__init__(_receive, self._queue)
        self.arrivals: dict[str, float] = {}
        self.count = 0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            call_id, at = self._queue.get()
            self.arrivals.setdefault(call_id, at)
            self.count += 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"
