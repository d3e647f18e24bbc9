"""The long-running process: leadership, one poll loop per source, the delivery
dispatcher, the HTTP listener and the systemd watchdog, plus signal handling.

Every daemon sharing a store runs the same loop: try to take the lease; as a standby,
try again every second (or poll interval, if shorter); as the leader, poll, commit and
send until the lease is lost or a stop is asked for, then step back. Everything a term
needs (pollers, the dispatcher) is made new for it from the committed state, so a
daemon that was deposed never carries memory over into its next term.

SIGTERM/SIGINT: stop polling, give in-flight deliveries a bounded time, give the lease
up, exit 0 (what is undelivered stays in the store). SIGHUP: validate the new config,
swap it in between polls, or keep the old one and say why.
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from anyio.abc import TaskGroup
from sqlalchemy.exc import SQLAlchemyError

from notifier.bland import BlandClient, request_backstop
from notifier.config import Config, ConfigError, HttpConfig, SourceConfig, changes, load_config
from notifier.detect import DetectState
from notifier.durations import format_duration
from notifier.heartbeat import Heartbeat
from notifier.lease import STORE_TROUBLE, Lease, LeaseHeld, LeaseLost, keep, read_leader
from notifier.listener import Listener, Standing, WSGIApp
from notifier.logs import kv, log, register_secrets
from notifier.metrics import Metrics
from notifier.model import Event, iso
from notifier.outbox import Dispatcher, send_unrecorded
from notifier.poller import DETAILS_BUDGET, Cycle, Poller
from notifier.sdnotify import Notifier, watchdog_interval
from notifier.store import BUSY_TIMEOUT, Store, StoreError, error_reason
from notifier.threads import ThreadBudget

T = TypeVar("T")
DRAIN_TIMEOUT = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Retention pruning runs this often, in small batches, off the poll path.
PRUNE_EVERY = 600.0
#: The WAL is folded back into the database this often, off the poll path.
CHECKPOINT_EVERY = 10.0
#: A standby asks for the lease at least this often (SPEC: a clean stop is taken over
#: within poll_interval + 1 s).
STANDBY_CHECK = 1.0
#: After a store error, migrating is tried again this soon (doubling, up to 30 s).
STORE_RETRY = 1.0
#: A store call of the leadership loop that has not answered in this long counts as a
#: store outage (a partition: no error ever comes). Its thread is left to end on its own.
STORE_TIMEOUT = 5.0


def tune_gc() -> None:
    """Tens of thousands of long-lived call states make CPython's default collector
    rescan them many times a poll; collect far less often (nothing here builds
    reference cycles at a rate that needs more)."""
    gc.set_threshold(50_000, 50, 100)


@dataclass
class _SourceLoop:
    """One source's schedule within a term."""

    poller: Poller
    wake: anyio.Event = field(default_factory=anyio.Event)
    lock: anyio.Lock = field(default_factory=anyio.Lock)  # a reload swaps config and client only between polls
    last_start: float = field(default_factory=time.monotonic)  # of the latest poll
    busy_since: float | None = None
    poll_scope: anyio.CancelScope | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)  # the whole loop (a source removed)
    polled: anyio.Event = field(default_factory=anyio.Event)  # the first poll of the term is done
    # Where this source's polls fall: ``phase`` seconds into each interval counted from
    # ``origin`` (the term's start; None: the loop's own first poll). See ``_start_loop``.
    phase: float = 0.0
    origin: float | None = None


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
        self.lease = Lease(self.store, float(config.storage.lease), clock=clock)
        self._stop = anyio.Event()
        self._standby_wake = anyio.Event()
        self._loops: dict[str, _SourceLoop] = {}
        self._term_tg: TaskGroup | None = None
        self._heartbeat = self._make_heartbeat(config)
        self._status: str | None = None  # the last STATUS= line sent to systemd
        self._ready = False
        self._store_error: str | None = None
        self._leader_seen: str | None = None  # who leads, as last read by a standby
        self._deposed_term = 0  # the last term whose end was logged
        # The leadership loop's store calls: one at a time, abandoned at their deadline;
        # while one still hangs the next is not started (threads would pile up for as
        # long as a partition lasts), and the store counts as unavailable.
        self._store_calls = ThreadBudget(1, "store")
        self._unrecorded: dict[str, float] = {}  # per source: since when its polls cannot be recorded
        self._alerted: set[str] = set()  # sources whose store alert went out (not yet the recovery)
        self.metrics = Metrics(states=self._states, queue=self._queue_stats, clock=clock)
        for name in config.sources:
            self.metrics.add_source(name)
        self.metrics.leader.set_function(lambda: 1.0 if self.role == "leader" else 0.0)
        self.dispatcher: Dispatcher | None = None
        self.listener: Listener | None = None

    # -- what the listener and metrics see ------------------------------------------------

    @property
    def role(self) -> str:
        """A leader until its lease may have run out by its own clock, whatever a stuck
        store call in its term still waits for."""
        return "leader" if self._loops and self.lease.held() else "standby"

    def _states(self) -> dict[str, DetectState]:
        return {name: loop.poller.state for name, loop in self._loops.items()}

    def _queue_stats(self) -> tuple[int, float | None]:
        try:
            return self.store.queue_stats()
        except SQLAlchemyError:
            return 0, None

    def standing(self) -> Standing:
        sources = {
            name: (loop.poller.state, float(self.config.sources[name].unreachable_after))
            for name, loop in list(self._loops.items())
            if name in self.config.sources
        }
        return Standing(self.role, sources, self._store_error, self._leader_seen)

    def _web(self, http: HttpConfig) -> WSGIApp:
        from notifier.web import wsgi_app
        from notifier.web.api import WebContext

        token = http.token.reveal() if http.token is not None else None
        return wsgi_app(WebContext(self.store, self.standing, self.clock, token), http.listen)

    def _store_ok(self) -> None:
        if self._store_error is not None:
            log.info("the store is reachable again", extra=kv(database=self.store.description))
        self._store_error = None

    async def _ask_store(self, fn: Callable[..., T], *args: object, timeout: float = STORE_TIMEOUT) -> T:
        """A store call off the loop, bounded in time (see ``_store_calls``)."""
        return await self._store_calls.call(fn, *args, timeout=timeout)

    def _store_failed(self, exc: Exception) -> None:
        reason = error_reason(exc)
        if self._store_error is None:
            log.error("the store is unavailable", extra=kv(database=self.store.description, error=reason))
        self._store_error = reason
        self.metrics.store_errors.inc()

    # -- the process ----------------------------------------------------------------------

    async def run(self, stop_requested: Callable[[], bool] = lambda: False) -> int:
        register_secrets(self.config.secrets())
        tune_gc()
        handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        try:
            if self.config.http is not None:
                self.listener = Listener(
                    self.config.http.listen, self.metrics, self.standing, self.clock, self._web(self.config.http)
                )
                self.listener.start()
            await self._run_tasks(stop_requested)
        finally:
            if self.listener is not None:
                self.listener.stop()
            self.store.close()
            self.notify.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        log.info("stopped")
        return 0

    async def _run_tasks(self, stop_requested: Callable[[], bool]) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._signals)
                await anyio.sleep(0)  # let the signal receiver take over from early_signals
                if stop_requested():
                    self.stop()
                interval = watchdog_interval()
                if interval is not None:
                    tg.start_soon(self._watchdog, interval)
                if await self._upgrade():
                    log.info(
                        "started",
                        extra=kv(
                            database=self.store.description,
                            sources=",".join(self.config.sources),
                            interval=f"{self.config.poll_interval:g}s",
                            lease=format_duration(self.lease.duration),
                            listen=self.listener.address if self.listener else None,
                        ),
                    )
                    await self._leadership()
                tg.cancel_scope.cancel()
        except* StoreError as failed:  # a damaged database: said once, plainly (no traceback)
            raise failed.exceptions[0] from None

    async def _upgrade(self) -> bool:
        """Migrate the store, riding out its outages (False: stopped before it worked)."""
        delay = STORE_RETRY
        while not self._stop.is_set():
            try:
                await anyio.to_thread.run_sync(self.store.upgrade)  # StoreError: damaged, not retried
            except SQLAlchemyError as exc:
                self._store_failed(exc)
                with anyio.move_on_after(delay):
                    await self._stop.wait()
                delay = min(delay * 2, 30.0)
                continue
            self._store_ok()
            return True
        return False

    async def _leadership(self) -> None:
        """Standby until the lease is ours, leader until it is not; until a stop."""
        while not self._stop.is_set():
            try:
                won = await self._ask_store(self.lease.attempt)
            except STORE_TROUBLE as exc:
                self._store_failed(exc)
                won = False
            else:
                self._store_ok()
            if won:
                await self._lead()
                continue
            await self._observe_leader()
            if not self._ready:
                self._ready = True
                self.notify.ready(self._status)
            self._standby_wake = anyio.Event()
            with anyio.move_on_after(min(STANDBY_CHECK, self.config.poll_interval)):
                await self._standby_wake.wait()

    async def _observe_leader(self) -> None:
        """A standby says who leads (a log line when that changes) and in STATUS=."""
        if self._store_error is not None:
            return  # the attempt just failed: nothing to read
        try:
            info = await self._ask_store(read_leader, self.store, self.clock)
        except STORE_TROUBLE as exc:
            self._store_failed(exc)
            return
        leader = info.describe() if info is not None and info.held else None
        if leader != self._leader_seen or self._status is None:
            self._leader_seen = leader
            if leader:
                log.info("standby", extra=kv(leader=leader, term=info.term if info else None))
            self._status = f"standby; leader: {leader or 'none (taking over)'}"
            self.notify.status(self._status)

    async def _lead(self) -> None:
        """One term: fresh state from the store, a poll loop per source, the dispatcher,
        the lease kept alive; ends on a stop (lease given up) or when the lease is lost."""
        term = self.lease.term
        assert term is not None
        self.metrics.leader_changes.inc()
        self._leader_seen = None
        log.info("became the leader", extra=kv(term=term.number))
        self.dispatcher = Dispatcher(
            self.store,
            self.config,
            self.clock,
            on_attempt=lambda delivery, outcome: self.metrics.observe_attempt(delivery.target, outcome),
            fence=self.lease.check,
        )
        try:
            async with anyio.create_task_group() as tg:
                self._term_tg = tg
                tg.start_soon(self._keep_lease)
                origin = time.monotonic()
                for name in self.config.sources:
                    await self._start_loop(name, origin)
                tg.start_soon(self._announce_ready)
                await self.dispatcher.retire_removed_targets()
                tg.start_soon(self.dispatcher.run)
                tg.start_soon(self._prune_loop)
                tg.start_soon(self._checkpoint_loop)
                await self._stop.wait()
                for loop in self._loops.values():
                    with anyio.CancelScope(shield=True):
                        async with loop.lock:  # let a poll that is committing finish
                            pass
                if not await self.dispatcher.drain(DRAIN_TIMEOUT):
                    log.warning("stopped with deliveries in flight; they are resent at the next start")
                tg.cancel_scope.cancel()
        except* LeaseLost as lost:
            self._deposed(term.number, str(lost.exceptions[0]))
        except* SQLAlchemyError as failed:
            # The term's state could not be loaded (or kept): let the lease lapse, try again.
            self._store_failed(failed.exceptions[0])  # type: ignore[arg-type]
            self._deposed(term.number, "a store error; stepping down")
        finally:
            self._term_tg = None
            clients = [loop.poller.client for loop in self._loops.values()]
            self._loops = {}
            self.metrics.leader_changes.inc()
            with anyio.CancelScope(shield=True):
                for client in clients:
                    await client.aclose()
                if self._stop.is_set() and self.lease.term is not None:
                    try:
                        await anyio.to_thread.run_sync(self.lease.release)
                        log.info("gave the lease up", extra=kv(term=term.number))
                    except SQLAlchemyError as exc:
                        self._store_failed(exc)
            self.lease.step_down()

    def _deposed(self, term: int, reason: str) -> None:
        """Said once per term, as soon as it is known (a store call that hangs may keep
        the term's tasks winding down for a while; they no longer act)."""
        if self._deposed_term != term:
            self._deposed_term = term
            log.warning("no longer the leader; now a standby", extra=kv(term=term, reason=reason))

    async def _start_loop(self, name: str, origin: float | None = None) -> None:
        assert self._term_tg is not None
        state = await anyio.to_thread.run_sync(self.store.load_state, name)
        poller = Poller(
            self.config, self.store, _client(self.config.sources[name]), state, self.clock, self.lease.check
        )
        # Every source polls at once at the start of a term (readiness waits for all of
        # them), then each keeps its own place in the interval, counted from the term's
        # start (not from its own first poll, which waited for the states loaded before
        # it): spread out, the polls of many sources do not all contend for the CPU and
        # the store's write lock at once.
        names = list(self.config.sources)
        phase = float(self.config.sources[name].poll_interval) * names.index(name) / len(names)
        loop = self._loops[name] = _SourceLoop(poller, phase=phase, origin=origin)
        self._term_tg.start_soon(self._poll_loop, loop)

    async def _announce_ready(self) -> None:
        """READY=1 once each source's first poll of the term is done (or has failed)."""
        for loop in list(self._loops.values()):
            await loop.polled.wait()
        if not self._ready:
            self._ready = True
            self.notify.ready(self._status)

    async def _keep_lease(self) -> None:
        term = self.lease.term.number if self.lease.term else 0
        try:
            await keep(self.lease, self._ask_store, self._store_failed, self._store_ok)
        except LeaseLost as lost:
            self._deposed(term, str(lost))
            raise

    async def _prune_loop(self) -> None:
        """Retention: drop old events and finished deliveries, a small batch at a time."""
        while True:
            before = self.clock() - float(self.config.storage.retention)
            removed = 0
            try:
                while batch := await anyio.to_thread.run_sync(self.store.prune, before):
                    removed += batch
                    await anyio.sleep(0.05)  # let polls and deliveries take the lock in between
            except SQLAlchemyError as exc:  # locked or full: the next round tries again
                self._store_failed(exc)
            if removed:
                log.info("pruned old records", extra=kv(rows=removed))
            await anyio.sleep(PRUNE_EVERY)

    async def _checkpoint_loop(self) -> None:
        while True:
            await anyio.sleep(CHECKPOINT_EVERY)
            try:
                await anyio.to_thread.run_sync(self.store.checkpoint)
            except SQLAlchemyError as exc:  # a full disk: the WAL keeps the data meanwhile
                self._store_failed(exc)

    async def _poll_loop(self, loop: _SourceLoop) -> None:
        with loop.scope:
            await self._cycle(loop)
            loop.polled.set()
            loop.last_start = (loop.last_start if loop.origin is None else loop.origin) + loop.phase
            while not self._stop.is_set():
                with anyio.move_on_after(self._wait(loop)):
                    await loop.wake.wait()
                loop.wake = anyio.Event()
                if self._stop.is_set():
                    break
                with anyio.CancelScope() as scope:
                    loop.poll_scope = scope
                    await self._cycle(loop)
        loop.polled.set()

    async def _cycle(self, loop: _SourceLoop) -> None:
        poller = loop.poller
        loop.busy_since = loop.last_start = time.monotonic()
        try:
            async with loop.lock:
                cycle = await poller.poll()
        finally:
            loop.busy_since = None
        if cycle.store_error is not None:
            self._store_failed(RuntimeError(cycle.store_error))
        elif cycle.committed:
            self._store_ok()
        self._watch_unrecorded(loop, cycle)
        if self.dispatcher is not None:
            self.dispatcher.wake(cycle.targets)
        if self._heartbeat is not None and self._term_tg is not None:
            self._heartbeat.after_cycle(self._term_tg)
        self.metrics.observe_poll(poller.name, cycle.ok, cycle.duration, cycle.counts, cycle.skipped, cycle.at)
        for (target, status), count in cycle.quieted.items():
            self.metrics.observe_attempt(target, status, count)
        if self.notify.enabled:  # the queue query runs only when systemd is listening
            self._status = await self._status_line(cycle)
            self.notify.status(self._status)

    def _watch_unrecorded(self, loop: _SourceLoop, cycle: Cycle) -> None:
        """Polls that cannot be recorded are failed polls, and a source that has failed
        for ``unreachable_after`` is announced: ``source.unreachable`` (and then
        ``source.recovered``), sent straight to the targets, since the outbox lives in
        the very store that fails. Their ``last_error`` says it is the store."""
        name = loop.poller.name
        if cycle.store_error is not None:
            since = self._unrecorded.setdefault(name, cycle.at)
            after = float(self.config.sources[name].unreachable_after)
            if cycle.at - since >= after and name not in self._alerted:
                self._alerted.add(name)
                data = {
                    "since": iso(since),
                    "consecutive_failures": loop.poller.failures,
                    "last_error": f"the store cannot record polls: {cycle.store_error}",
                }
                self._send_unrecorded(loop, "source.unreachable", since, data)
        elif cycle.committed:
            since = self._unrecorded.pop(name, None)
            if name in self._alerted and since is not None:
                self._alerted.discard(name)
                self._send_unrecorded(loop, "source.recovered", since, {"downtime_seconds": cycle.at - since})

    def _send_unrecorded(self, loop: _SourceLoop, type_: str, since: float, data: dict[str, object]) -> None:
        state = loop.poller.state
        event = Event(
            id=f"evt_{state.instance}_store_{type_.partition('.')[2]}_{round(since * 1000)}",
            type=type_,
            detected_at=self.clock(),
            data={**data, "source": state.name},
        )
        if self._term_tg is not None:
            self._term_tg.start_soon(send_unrecorded, event, self.config, self.clock)

    def _wait(self, loop: _SourceLoop) -> float:
        """Seconds until the next poll. While healthy, polls start every interval (the
        poll's own duration does not stretch the period, nor the detection latency);
        a backoff or a Retry-After counts from the failed answer."""
        delay = loop.poller.delay()
        if loop.poller.failures:
            return delay
        return max(0.0, delay - (time.monotonic() - loop.last_start))

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
        self._standby_wake.set()
        for loop in self._loops.values():
            loop.wake.set()
            if loop.poll_scope is not None and not loop.poller.committing:
                loop.poll_scope.cancel()  # an in-flight request; a commit runs to its end

    def _make_heartbeat(self, config: Config) -> Heartbeat | None:
        if config.heartbeat is None:
            return None
        return Heartbeat(config.heartbeat, lambda result: self.metrics.heartbeats.labels(result).inc())

    async def _reload(self) -> None:
        self.notify.reloading()
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config.path, self.env)
            if new.storage != self.config.storage:
                raise ConfigError(new.path, "storage", "changing [storage] needs a restart; kept the running config")
        except ConfigError as exc:
            log.error("reload failed; still running on the previous config", extra=kv(reason=str(exc)))
        else:
            await self._apply(new)
        self.notify.ready()

    async def _apply(self, new: Config) -> None:
        """Swap in a validated config; each source's loop takes it between its polls."""
        old, self.config = self.config, new
        register_secrets(old.secrets() + new.secrets())  # in-flight work may still quote old ones
        for name in new.sources:
            self.metrics.add_source(name)
        for name, loop in list(self._loops.items()):
            if name not in new.sources:  # removed: its loop ends, its stored state stays
                loop.scope.cancel()
                del self._loops[name]
                await loop.poller.client.aclose()
                continue
            async with loop.lock:
                if new.sources[name] != old.sources.get(name):  # new key, org or URL: a new client
                    previous, loop.poller.client = loop.poller.client, _client(new.sources[name])
                    await previous.aclose()
                loop.poller.config = new
        if self._term_tg is not None:
            for name in new.sources:
                if name not in self._loops:
                    try:
                        await self._start_loop(name)
                    except SQLAlchemyError as exc:
                        self._store_failed(exc)
        if self.dispatcher is not None:
            self.dispatcher.update(new)
            if set(new.targets) != set(old.targets):
                await self.dispatcher.retire_removed_targets()
            if new.rules != old.rules:  # a mute ended, moved or went: what it held is judged again now
                await self.dispatcher.release_held()
        if new.http != old.http:
            log.warning("[http] changes take effect at the next restart")
        if new.heartbeat != old.heartbeat:
            self._heartbeat = self._make_heartbeat(new)
        changed = changes(old, new)
        log.info("reloaded" if changed else "reloaded; nothing changed", extra=kv(**changed))

    async def _watchdog(self, interval: float) -> None:
        # Past the longest a working poll can take (its request, the details budget, a
        # writer's wait for the lock, and a margin for the work itself), the poll is hung:
        # keep-alives stop and systemd restarts the daemon. A standby is never busy.
        while True:
            now = time.monotonic()
            hung = any(
                loop.busy_since is not None and now - loop.busy_since >= _stall_limit(self.config.sources[name])
                for name, loop in list(self._loops.items())
                if name in self.config.sources
            )
            if not hung:
                self.notify.watchdog()
            await anyio.sleep(interval)

    async def _status_line(self, cycle: Cycle) -> str:
        """systemd's STATUS=: what an operator wants from ``systemctl status``."""
        depth, oldest_created = await anyio.to_thread.run_sync(self._queue_stats)
        oldest = self.clock() - oldest_created if oldest_created is not None else 0.0
        when = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        parts = []
        for name, loop in list(self._loops.items()):
            failures = loop.poller.failures
            health = "ok" if not failures else f"failing ({failures}x)"
            label = "" if len(self._loops) == 1 else f"{name}: "
            parts.append(f"{label}{len(loop.poller.state.calls)} active calls, {health}")
        queue = f"{depth} deliveries queued" + (f" (oldest {format_duration(oldest)})" if depth else "")
        store = f"; store unavailable: {self._store_error}" if self._store_error else ""
        return f"leader; {'; '.join(parts)}; last poll {when}; {queue}{store}"


def _stall_limit(source: SourceConfig) -> float:
    return request_backstop(float(source.timeout)) + DETAILS_BUDGET + BUSY_TIMEOUT + 30.0


def _client(source: SourceConfig) -> BlandClient:
    return BlandClient(
        source.base_url, source.api_key, source.org_id, float(source.timeout), source.max_answer_mb * 2**20
    )


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
        lease = Lease(store, float(config.storage.lease))
        if not await anyio.to_thread.run_sync(lease.attempt):
            info = await anyio.to_thread.run_sync(read_leader, store)
            leader = info.describe() if info is not None else "another daemon"
            raise LeaseHeld(f"{leader} leads (it holds the lease); once did nothing")
        try:
            async with anyio.create_task_group() as tg:
                # A long pass (many sends, min_interval) outlives one lease: keep it alive.
                tg.start_soon(keep, lease, ThreadBudget(1, "store").call)
                ok = True
                for name in config.sources:
                    state = await anyio.to_thread.run_sync(store.load_state, name)
                    async with _client(config.sources[name]) as client:
                        cycle = await Poller(config, store, client, state, fence=lease.check).poll()
                    ok = ok and cycle.ok
                await Dispatcher(store, config, fence=lease.check).pass_once()
                tg.cancel_scope.cancel()
        except* LeaseLost as lost:
            raise LeaseHeld(f"once stopped: {lost.exceptions[0]} (another daemon took over)") from None
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lease.release)
    finally:
        store.close()
    return 0 if ok else 1


def run_once(config: Config, env: Mapping[str, str]) -> int:
    """``notifier once``: one poll of each source (and one delivery pass) under the lease;
    exit 1 if a poll failed, 75 if another daemon leads."""
    return anyio.run(_once, config, env)
