"""A Bland-like API in its own process, so that its CPU never counts against the client.

Each request advances the campaign one step (1 % arrivals, departures and starts)
unless ``steady`` is set, and answers with the whole active list.
"""

from __future__ import annotations

import multiprocessing
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from benchmarks.bodies import Campaign

API_KEY = "bench-key"
ORG_ID = "bench-org"


def _serve(size: int, steady: bool, port_out: Any) -> None:
    campaign = Campaign(size)
    lock = threading.Lock()
    state = {"body": campaign.body(), "version": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            with lock:
                if not steady:
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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_out.put(server.server_address[1])
    server.serve_forever()


class BenchServer:
    def __init__(self, size: int, steady: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        ports = context.Queue()
        self.process = context.Process(target=_serve, args=(size, steady, ports), daemon=True)
        self.process.start()
        self.port = ports.get(timeout=120)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_call(self, call_id: str) -> None:
        """Returns once the call is in the list the API answers with."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.base_url}/calls/{call_id}", method="POST")).read()

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)
