"""Blocking calls that may never return (a server that trickles forever, a socket no
timeout covers), each in a daemon thread of its own, within a budget.

anyio's worker pool would be the wrong home for them: one stuck call holds a pool
thread that every other caller shares, and a stopping process waits for it. A daemon
thread can be abandoned at a deadline and never holds up the exit; the budget bounds
how many abandoned ones may pile up, and a thread that cannot be started (a cgroup's
task limit) is an error of this one call, not of the process.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

T = TypeVar("T")


class ThreadsExhausted(Exception):
    """No thread for this call: too many earlier ones still hang, or none can be started."""


class CallTimeout(Exception):
    """The call did not finish in time; its thread is left to end on its own."""


class Pending(Generic[T]):
    """A call running in its thread. ``done`` is set (on the event loop) when it ends."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self._outcome: tuple[bool, Any] | None = None

    @property
    def finished(self) -> bool:
        return self._outcome is not None

    def result(self) -> T:
        """The call's value, or its exception raised; only once ``finished``."""
        assert self._outcome is not None
        ok, value = self._outcome
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]


class ThreadBudget:
    """At most ``limit`` calls of one owner running at once, abandoned ones included."""

    def __init__(self, limit: int, name: str) -> None:
        self.limit = limit
        self.name = name
        self._live = 0
        self._lock = threading.Lock()

    @property
    def live(self) -> int:
        return self._live

    def start(self, fn: Callable[[], T]) -> Pending[T]:
        """Run ``fn`` in a new daemon thread; raises ThreadsExhausted instead of waiting."""
        pending: Pending[T] = Pending()
        token = anyio.lowlevel.current_token()

        def run() -> None:
            try:
                pending._outcome = (True, fn())
            except BaseException as exc:  # handed to the awaiting task, which raises it
                pending._outcome = (False, exc)
            finally:
                with self._lock:
                    self._live -= 1
            try:
                anyio.from_thread.run_sync(pending.done.set, token=token)
            except RuntimeError:
                pass  # the event loop is gone: the process is stopping and nobody waits

        with self._lock:
            if self._live >= self.limit:
                raise ThreadsExhausted(f"{self._live} earlier calls still hang; not starting another")
            self._live += 1
        try:
            threading.Thread(target=run, name=self.name, daemon=True).start()
        except RuntimeError as exc:
            with self._lock:
                self._live -= 1
            raise ThreadsExhausted(f"cannot start a thread ({exc})") from None
        return pending

    async def call(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """``fn(*args)`` in a thread of this budget, awaited for at most ``timeout``
        seconds (CallTimeout after that; ThreadsExhausted if no thread is to be had)."""
        pending = self.start(functools.partial(fn, *args))
        with anyio.move_on_after(max(0.0, timeout)):
            await pending.done.wait()
        if not pending.finished:
            raise CallTimeout(f"no answer within {timeout:g}s")
        return pending.result()
