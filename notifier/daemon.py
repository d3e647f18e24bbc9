"""The long-running process: one anyio task group around the poller, the delivery
dispatcher, the HTTP listener and the systemd watchdog, plus signal handling.

SIGTERM/SIGINT: stop polling, give in-flight deliveries a bounded time, exit 0 (what
is undelivered stays in the store). SIGHUP: validate the new config, swap it in
between polls, or keep the old one and say why.
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import anyio

from notifier.bland import BlandClient, request_backstop
from notifier.config import Config, ConfigError, load_config
from notifier.detect import DetectState
from notifier.durations import format_duration
from notifier.listener import Listener
from notifier.logs import kv, log, register_secrets
from notifier.metrics import Metrics
from notifier.outbox import Dispatcher
from notifier.poller import DETAILS_BUDGET, Cycle, Poller
from notifier.sdnotify import Notifier, watchdog_interval
from notifier.store import BUSY_TIMEOUT, Store

DRAIN_TIMEOUT = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Retention pruning runs this often, in small batches, off the poll path.
PRUNE_EVERY = 600.0
#: The WAL is folded back into the database this often, off the poll path.
CHECKPOINT_EVERY = 10.0


def tune_gc() -> None:
    """Tens of thousands of long-lived call states make CPython's default collector
    rescan them many times a poll; collect far less often (nothing here builds
    reference cycles at a rate that needs more)."""
    gc.set_threshold(50_000, 50, 100)


class Daemon:
    def __init__(
        self,
        config: Config,
        env: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.env = env
        self.clock = clock
        self.notify = notifier or Notifier()
        self.store = Store(config.storage.url, dict(env))
        self._stop = anyio.Event()
        self._wake = anyio.Event()
        self._busy_since: float | None = None
        self._last_start = time.monotonic()  # of the latest poll
        self._poll_scope: anyio.CancelScope | None = None
        self._between_polls = anyio.Lock()  # a reload swaps config and client only here
        self._status: str | None = None  # the last STATUS= line sent to systemd
        self.poller: Poller | None = None
        self.metrics = Metrics(state=self._state, queue=self.store.queue_stats, clock=clock)
        self.dispatcher = Dispatcher(
            self.store,
            config,
            clock,
            on_attempt=lambda delivery, record: self.metrics.observe_attempt(delivery.target, record.outcome),
        )
        self.listener: Listener | None = None

    def _state(self) -> DetectState | None:
        return self.poller.state if self.poller else None

    async def run(self, stop_requested: Callable[[], bool] = lambda: False) -> int:
        register_secrets(self.config.secrets())
        tune_gc()
        await anyio.to_thread.run_sync(self.store.upgrade)
        state = await anyio.to_thread.run_sync(self.store.load_state)
        gc.freeze()  # the loaded state lives long: keep it out of every future collection
        self.poller = Poller(self.config, self.store, _client(self.config), state, self.clock)
        handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        try:
            if self.config.http is not None:
                self.listener = Listener(
                    self.config.http.listen,
                    self.metrics,
                    self._state,
                    lambda: self.config.detect.unreachable_after,
                    self.clock,
                )
                self.listener.start()
            log.info(
                "started",
                extra=kv(
                    database=self.store.path,
                    calls=len(state.calls),
                    interval=f"{self.config.poll_interval:g}s",
                    listen=self.listener.address if self.listener else None,
                ),
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals)
                await anyio.sleep(0)  # let the signal receiver take over from early_signals
                if stop_requested():
                    self._stop.set()
                tg.start_soon(self.dispatcher.run)
                tg.start_soon(self._prune_loop)
                tg.start_soon(self._checkpoint_loop)
                await self._cycle()
                self.notify.ready(self._status)
                interval = watchdog_interval()
                if interval is not None:
                    tg.start_soon(self._watchdog, interval)
                await self._poll_loop()
                if not await self.dispatcher.drain(DRAIN_TIMEOUT):
                    log.warning("stopped with deliveries in flight; they are resent at the next start")
                tg.cancel_scope.cancel()
        finally:
            if self.listener is not None:
                self.listener.stop()
            await self.poller.client.aclose()
            self.store.close()
            self.notify.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        log.info("stopped")
        return 0

    async def _cycle(self) -> None:
        assert self.poller is not None
        self._busy_since = self._last_start = time.monotonic()
        try:
            async with self._between_polls:
                cycle = await self.poller.poll()
        finally:
            self._busy_since = None
        self.dispatcher.wake(cycle.targets)
        self.metrics.observe_poll(cycle.ok, cycle.duration, cycle.counts, cycle.skipped, cycle.at)
        if self.notify.enabled:  # the queue query runs only when systemd is listening
            self._status = await self._status_line(cycle)
            self.notify.status(self._status)

    async def _prune_loop(self) -> None:
        """Retention: drop old events and finished deliveries, a small batch at a time."""
        while True:
            before = self.clock() - float(self.config.storage.retention)
            removed = 0
            while batch := await anyio.to_thread.run_sync(self.store.prune, before):
                removed += batch
                await anyio.sleep(0.05)  # let polls and deliveries take the lock in between
            if removed:
                log.info("pruned old records", extra=kv(rows=removed))
            await anyio.sleep(PRUNE_EVERY)

    async def _checkpoint_loop(self) -> None:
        while True:
            await anyio.sleep(CHECKPOINT_EVERY)
            await anyio.to_thread.run_sync(self.store.checkpoint)

    async def _poll_loop(self) -> None:
        assert self.poller is not None
        while not self._stop.is_set():
            with anyio.move_on_after(self._wait()):
                await self._wake.wait()
            self._wake = anyio.Event()
            if self._stop.is_set():
                break
            with anyio.CancelScope() as scope:
                self._poll_scope = scope
                await self._cycle()

    def _wait(self) -> float:
        """Seconds until the next poll. While healthy, polls start every interval (the
        poll's own duration does not stretch the period, nor the detection latency);
        a backoff or a Retry-After counts from the failed answer."""
        assert self.poller is not None
        delay = self.poller.delay()
        if self.poller.failures:
            return delay
        return max(0.0, delay - (time.monotonic() - self._last_start))

    async def _signals(self) -> None:
        # Listens until ``run`` ends: a second Ctrl-C (or ``timeout``, which signals the
        # process and then its group) must not land in the default handler mid-shutdown.
        try:
            with anyio.open_signal_receiver(*STOP_SIGNALS, signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        if not self._stop.is_set():
                            await self._reload()
                    elif self._stop.is_set():
                        log.info("already stopping", extra=kv(signal=signal.Signals(signum).name))
                    else:
                        log.info("stopping", extra=kv(signal=signal.Signals(signum).name))
                        self.stop()
        finally:
            # ``run`` is past its loop and closing the store: a stop signal now would only
            # repeat the request, and must not interrupt the close (``run`` restores the
            # handlers once it is done).
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)

    def stop(self) -> None:
        """Stop polling now; ``run`` then drains deliveries for a bounded time and returns."""
        self.notify.stopping()
        self._stop.set()
        self._wake.set()
        if self._poll_scope is not None:
            self._poll_scope.cancel()  # an in-flight request; a commit runs to its end

    async def _reload(self) -> None:
        self.notify.reloading()
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config.path, self.env)
            if new.storage != self.config.storage:
                raise ConfigError(new.path, "storage", "changing [storage] needs a restart; kept the running config")
        except ConfigError as exc:
            log.error("reload failed; still running on the previous config", extra=kv(reason=str(exc)))
        else:
            async with self._between_polls:
                await self._apply(new)
        self.notify.ready()

    async def _apply(self, new: Config) -> None:
        """Swap in a validated config; called between polls only."""
        old, self.config = self.config, new
        register_secrets(old.secrets() + new.secrets())  # in-flight work may still quote old ones
        if self.poller is not None:
            if new.source != old.source:  # new key, org or URL: a new client
                previous, self.poller.client = self.poller.client, _client(new)
                await previous.aclose()
            self.poller.config = new
        self.dispatcher.update(new)
        if new.http != old.http:
            log.warning("[http] changes take effect at the next restart")
        log.info("reloaded", extra=kv(rules=len(new.rules), targets=len(new.targets)))

    async def _watchdog(self, interval: float) -> None:
        # Past the longest a working poll can take (its request, the details budget, a
        # writer's wait for the lock, and a margin for the work itself), the poll is hung:
        # keep-alives stop and systemd restarts the daemon.
        stall_limit = request_backstop(float(self.config.source.timeout)) + DETAILS_BUDGET + BUSY_TIMEOUT + 30.0
        while True:
            busy = self._busy_since
            if busy is None or time.monotonic() - busy < stall_limit:
                self.notify.watchdog()
            await anyio.sleep(interval)

    async def _status_line(self, cycle: Cycle) -> str:
        """systemd's STATUS=: what an operator wants from ``systemctl status``."""
        depth, oldest_created = await anyio.to_thread.run_sync(self.store.queue_stats)
        oldest = self.clock() - oldest_created if oldest_created is not None else 0.0
        health = "ok" if cycle.ok else f"failing ({self.poller.failures if self.poller else 0}x)"
        when = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        queue = f"{depth} deliveries queued" + (f" (oldest {format_duration(oldest)})" if depth else "")
        return f"{cycle.calls} active calls; last poll {when} {health}; {queue}"


def _client(config: Config) -> BlandClient:
    source = config.source
    return BlandClient(source.base_url, source.api_key, source.org_id, float(source.timeout))


@contextmanager
def early_signals() -> Iterator[Callable[[], bool]]:
    """Remember a SIGTERM/SIGINT that arrives while starting up (before the event loop
    installs its handlers), so that the daemon stops cleanly instead of dying."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield lambda: bool(received)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_daemon(config: Config, env: Mapping[str, str], stop_requested: Callable[[], bool] = lambda: False) -> int:
    daemon = Daemon(config, env)
    return anyio.run(daemon.run, stop_requested)


async def _once(config: Config, env: Mapping[str, str]) -> int:
    store = Store(config.storage.url, dict(env))
    try:
        await anyio.to_thread.run_sync(store.upgrade)
        state = await anyio.to_thread.run_sync(store.load_state)
        async with _client(config) as client:
            cycle = await Poller(config, store, client, state).poll()
        await Dispatcher(store, config).pass_once()
    finally:
        store.close()
    return 0 if cycle.ok else 1


def run_once(config: Config, env: Mapping[str, str]) -> int:
    """``notifier once``: one poll (and one delivery pass); exit 1 if the poll failed."""
    return anyio.run(_once, config, env)
