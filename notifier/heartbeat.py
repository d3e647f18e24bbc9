"""The heartbeat: a GET to a dead man's switch after poll cycles, at most once per
``every``. When the daemon or its host dies the pings stop, and the service outside
(healthchecks.io, Cronitor, Dead Man's Snitch, ...) raises the alarm nobody inside can.

Only the leader pings (it is the one polling). A ping runs beside the poll loop,
never in it: a slow or failing switch costs a log line and a metric, not a poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import httpx
from anyio.abc import TaskGroup

from notifier.config import HeartbeatConfig
from notifier.logs import kv, log
from notifier.neterrors import describe


class Heartbeat:
    def __init__(self, config: HeartbeatConfig, record: Callable[[str], None]) -> None:
        self.config = config
        self._record = record  # the outcome ("ok" or "failed"), for the metric
        self._last: float | None = None  # monotonic time of the last ping started
        self._running = False

    def after_cycle(self, tg: TaskGroup) -> None:
        """A poll cycle completed (whatever its result): ping, if one is due and none is
        still running (a switch that hangs gets one request at a time, not a pile)."""
        now = time.monotonic()
        if self._running or (self._last is not None and now - self._last < float(self.config.every)):
            return
        self._last, self._running = now, True
        tg.start_soon(self._ping)

    async def _ping(self) -> None:
        timeout = float(self.config.timeout)
        try:
            with anyio.move_on_after(timeout + 1):  # the whole exchange, not each read
                # The answer's body is not read: a switch that streams one cannot fill memory.
                async with (
                    httpx.AsyncClient(timeout=timeout) as client,
                    client.stream("GET", self.config.url.reveal()) as response,
                ):
                    ok = response.is_success
                self._record("ok" if ok else "failed")
                if not ok:
                    log.warning("heartbeat refused", extra=kv(status=response.status_code))
                return
            self._timed_out(timeout)
        except httpx.TimeoutException:
            self._timed_out(timeout)
        except httpx.HTTPError as exc:
            self._record("failed")
            log.warning("heartbeat failed", extra=kv(error=describe(exc)))
        except Exception as exc:  # a URL httpx refuses at send time: said, never fatal to the daemon
            self._record("failed")
            log.warning("heartbeat failed", extra=kv(error=f"{type(exc).__name__} (check heartbeat.url)"))
        finally:
            self._running = False

    def _timed_out(self, timeout: float) -> None:
        self._record("failed")
        log.warning("heartbeat timed out", extra=kv(timeout=f"{timeout:g}s"))
