"""A TCP proxy on 127.0.0.1 that a test can cut: a daemon behind it loses its store
without being told (a partition, not a refused connection).

The server's side learns of the loss at once, as PostgreSQL does within seconds of a
real partition through the keepalives the daemon asks its sessions for (a proxy on
loopback answers every keepalive itself, so it closes the server's side instead).
"""

from __future__ import annotations

import socket
import threading
from typing import Any


class Proxy:
    """Relays 127.0.0.1:<port> to ``upstream``. ``cut()`` stops relaying and closes the
    server's side of every connection; the client's side stays open and hears nothing
    (its requests vanish). ``heal()`` resets those dead connections (the client then
    reconnects) and relays new ones again. ``close()`` ends it all."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []  # (client side, server side)
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            for _, server in self._pairs:
                _close(server)

    def heal(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, _ in pairs:
            _close(client)
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self._open.set()
        self._listener.close()
        with self._lock:
            for pair in self._pairs:
                for sock in pair:
                    _close(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._open.wait()  # while cut, a new connection gets no answer either
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                if not self._open.is_set():
                    return  # cut: what was in flight is lost, and the client is not told
                sink.sendall(chunk)
        except OSError:  # a reset (the server ended a session with a request unread), or a cut
            pass
        if self._open.is_set():  # an end of one side, clean or reset: pass it on, as a network would
            _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
