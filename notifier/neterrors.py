"""How a failed HTTP exchange is said: one vocabulary for the poller and the webhooks.

httpx words the same refusal as ``[Errno 111] Connection refused`` in a thread and
``All connection attempts failed`` under anyio; the operator should read one phrase,
the operating system's, whichever side met it.
"""

from __future__ import annotations

import os

import httpx

_KINDS: tuple[tuple[type[httpx.HTTPError], str], ...] = (
    (httpx.TimeoutException, "timed out"),
    (httpx.ConnectError, "cannot connect"),
    (httpx.ReadError, "connection broken while reading the answer"),
    (httpx.WriteError, "connection broken while sending"),
    (httpx.RemoteProtocolError, "the server broke the HTTP protocol"),
    (httpx.UnsupportedProtocol, "unsupported URL"),
)


def describe(exc: httpx.HTTPError) -> str:
    """``cannot connect: Connection refused``; the system's reason where there is one."""
    kind = next((phrase for cls, phrase in _KINDS if isinstance(exc, cls)), type(exc).__name__)
    reason = _os_reason(exc) or str(exc) or "no reason given"
    return f"{kind}: {reason}"


def _os_reason(exc: BaseException) -> str | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno) if current.errno > 0 else str(current.strerror)
        current = current.__cause__ or current.__context__
    return None
