"""The poll cycle: fetch -> detect -> enrich -> plan deliveries -> commit, and its pacing.

A thin shell: all decisions about what changed live in ``detect``, all decisions
about where events go in ``route``. This module only moves data between them, the
Bland client and the store, and decides when to poll next.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import anyio
import msgspec
from sqlalchemy.exc import SQLAlchemyError

from notifier.bland import BlandClient, PollError
from notifier.conditions import apply as apply_conditions
from notifier.conditions import inhibited_by
from notifier.config import Config, SourceConfig
from notifier.detect import DetectState, Transition, detect
from notifier.logs import kv, log
from notifier.model import Event, PollFailure, Snapshot
from notifier.quiet import judge_hops
from notifier.route import plan_deliveries
from notifier.store import Fence, PollRecord, StaleState, Store, error_reason

#: Upper bound on the backoff between failed polls (SPEC: the smaller of 15 s and
#: unreachable_after / 4, never below the poll interval): recovery is seen within ~15 s.
MAX_BACKOFF = 15.0
#: How long a poll may wait for call details before committing with ``outcome: null``.
DETAILS_BUDGET = 5.0
DETAILS_CONCURRENCY = 8


def next_delay(
    interval: float,
    failures: int,
    unreachable_after: float,
    retry_after: float | None = None,
    jitter: float = 0.0,
    until_unreachable: float | None = None,
) -> float:
    """Seconds until the next poll: the interval, or after failures a doubling backoff.

    ``jitter`` in [-1, 1] spreads retries by up to 10 % so that many daemons recovering
    from one outage do not poll in lockstep. ``until_unreachable``: seconds until the
    outage reaches ``unreachable_after``; a poll is made then, so that
    ``source.unreachable`` is on time rather than a backoff late.
    """
    if failures <= 0:
        return interval
    cap = max(interval, min(MAX_BACKOFF, unreachable_after / 4))
    delay = min(interval * 2 ** min(failures, 30), cap)
    delay *= 1 + 0.1 * jitter
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    if until_unreachable is not None and 0 < until_unreachable < delay:
        delay = until_unreachable
    return delay


@dataclass(frozen=True)
class Cycle:
    """What one poll did, for logging, metrics and the ``once`` exit code."""

    ok: bool
    events: list[Event]
    targets: frozenset[str]  # targets that got new deliveries: their workers wake now
    calls: int
    skipped: int
    duration: float
    at: float
    error: PollError | None = None
    store_error: str | None = None  # the poll could not be recorded (or the state reloaded)
    committed: bool = False
    quieted: Counter[tuple[str, str]] = field(default_factory=Counter)  # (target, silenced|muted): count

    @cached_property
    def counts(self) -> Counter[str]:
        """The events by type, counted once for the log line and the metrics."""
        return Counter(event.type for event in self.events)


class Poller:
    """Polls one source. ``fence`` gives the leadership term each commit must verify
    (it raises ``LeaseLost`` when this daemon may not act); None: unfenced."""

    def __init__(
        self,
        config: Config,
        store: Store,
        client: BlandClient,
        state: DetectState,
        clock: Callable[[], float] = time.time,
        fence: Callable[[], Fence] | None = None,
    ) -> None:
        self.config = config
        self.name = state.name
        self.store = store
        self.client = client
        self.state = state
        self.clock = clock
        self.fence = fence
        self.last_error: PollError | None = None
        self._stale = False  # the last commit failed: memory may not match the store
        self.committing = False  # a stop lets the commit finish; a lost lease abandons it
        self._store_failures = 0  # consecutive polls the store could not take: they back off too

    @property
    def source(self) -> SourceConfig:
        return self.config.sources[self.name]

    @property
    def failures(self) -> int:
        """Consecutive failed polls: of the source, or of the store that records them."""
        return max(self.state.source.failures, self._store_failures)

    def delay(self) -> float:
        retry_after = self.last_error.retry_after if self.last_error else None
        unreachable_after = float(self.source.unreachable_after)
        src = self.state.source
        until = None
        if src.failing_since is not None and not src.unreachable:
            until = src.failing_since + unreachable_after - self.clock()
        return next_delay(
            float(self.source.poll_interval),
            self.failures,
            unreachable_after,
            retry_after,
            random.uniform(-1, 1),
            until,
        )

    async def poll(self) -> Cycle:
        config = self.config  # a reload swaps self.config; one poll uses one config
        source = config.sources[self.name]
        settings = config.detect_for(self.name)
        started = time.perf_counter()
        fence = self.fence() if self.fence is not None else None
        if self._stale and (reason := await self._reload()) is not None:
            return self._failed(started, self.clock(), PollError("the store is unavailable"), reason)
        state = self.state

        def observe(answer: Snapshot | PollError) -> tuple[float, Transition]:
            now = self.clock()
            if isinstance(answer, PollError):  # a failed poll changes no condition
                return now, detect(state, PollFailure(answer.reason), now, settings)
            return now, apply_conditions(detect(state, answer, now, settings), config.conditions, now, state.calls)

        # Pure and CPU-bound at large N, so off the event loop: in the worker thread that
        # fetched and decoded the answer, while the decoded calls are still in the CPU's
        # caches (one thread hop instead of two: ~12 % less CPU a poll at 10k calls).
        answer, (now, transition) = await self.client.fetch_active(observe)
        error = answer if isinstance(answer, PollError) else None
        snapshot = answer if isinstance(answer, Snapshot) else None
        events = transition.events
        if source.fetch_details and any(e.type == "call.disappeared" for e in events):
            events = await self._enrich(events, float(source.timeout))
            transition = msgspec.structs.replace(transition, events=events)
        duration = time.perf_counter() - started
        record = PollRecord(
            at=now,
            duration=duration,
            ok=error is None,
            calls=len(snapshot.calls) if snapshot is not None else None,
            skipped=snapshot.skipped if snapshot is not None else None,
            error=error.reason if error else None,
        )
        self.committing = True
        try:
            # Silences live in the store, shared by every daemon: read when there is
            # something to judge (a quiet poll costs no query), so one made a moment ago counts.
            silences = (
                await anyio.to_thread.run_sync(self.store.silences, now, abandon_on_cancel=True) if events else []
            )
            conditions = transition.state.conditions
            inhibit = (lambda e: inhibited_by(conditions, config.conditions, e)) if conditions.instances else None
            planned = plan_deliveries(events, config.rules, config.digestible, judge_hops(now, silences, inhibit))
            # Abandoned (never interrupted) when the term ends: the fence inside its
            # transaction decides whether it lands, however late it runs.
            await anyio.to_thread.run_sync(
                self.store.commit_poll, transition, planned, record, fence, abandon_on_cancel=True
            )
        except (SQLAlchemyError, StaleState) as exc:
            # Nothing of this poll was kept. Memory is not trusted after a failed commit
            # (another writer may have moved the store on): the next poll reloads the
            # state first, then detects the same transitions again, with the same ids.
            self._stale = True
            log.error(
                "could not record the poll; its changes are picked up by the next one",
                extra=kv(source=self.name, error=error_reason(exc)),
            )
            return self._failed(started, now, PollError("could not record the poll"), error_reason(exc))
        finally:
            self.committing = False
        self.state = transition.state
        self.last_error = error
        self._store_failures = 0
        cycle = Cycle(
            ok=error is None,
            events=events,
            targets=frozenset(p.target for p in planned if p.status == "pending"),
            quieted=Counter((p.target, p.status) for p in planned if p.status != "pending"),
            calls=len(self.state.calls),
            skipped=record.skipped or 0,
            duration=duration,
            at=now,
            error=error,
            committed=True,
        )
        self._log(cycle, snapshot)
        return cycle

    async def _reload(self) -> str | None:
        """Replace the state in memory by the committed one; the store's error if it cannot."""
        try:
            self.state = await anyio.to_thread.run_sync(self.store.load_state, self.name)
        except SQLAlchemyError as exc:
            log.error("cannot reload the state from the store", extra=kv(source=self.name, error=error_reason(exc)))
            return error_reason(exc)
        self._stale = False
        log.info("reloaded the state from the store", extra=kv(source=self.name, calls=len(self.state.calls)))
        return None

    def _failed(self, started: float, now: float, error: PollError, store_error: str) -> Cycle:
        self._store_failures += 1
        return Cycle(
            ok=False,
            events=[],
            targets=frozenset(),
            calls=len(self.state.calls),
            skipped=0,
            duration=time.perf_counter() - started,
            at=now,
            error=error,
            store_error=store_error,
        )

    async def _enrich(self, events: list[Event], timeout: float) -> list[Event]:
        """Attach call details to disappeared events, within a bounded time."""
        outcomes: dict[str, dict[str, object]] = {}
        limiter = anyio.CapacityLimiter(DETAILS_CONCURRENCY)

        async def fetch(call_id: str) -> None:
            async with limiter:
                try:
                    outcomes[call_id] = await self.client.fetch_details(call_id)
                except PollError as exc:
                    log.warning("call details unavailable", extra=kv(call_id=call_id, reason=exc.reason))

        wanted = [e.call_id for e in events if e.type == "call.disappeared" and e.call_id]
        with anyio.move_on_after(min(DETAILS_BUDGET, timeout)):
            async with anyio.create_task_group() as tg:
                for call_id in wanted:
                    tg.start_soon(fetch, call_id)
        if len(outcomes) < len(wanted):
            log.warning("call details missing; outcome left null", extra=kv(missing=len(wanted) - len(outcomes)))
        return [
            msgspec.structs.replace(e, data={**e.data, "outcome": outcomes[e.call_id]})
            if e.type == "call.disappeared" and e.call_id in outcomes
            else e
            for e in events
        ]

    def _log(self, cycle: Cycle, snapshot: Snapshot | None) -> None:
        error = cycle.error
        if error is not None:
            level = log.error if error.auth else log.warning
            level("poll failed", extra=kv(source=self.name, reason=error.reason, failures=self.failures))
        elif snapshot is not None and snapshot.skipped:
            log.warning(
                "skipped entries of the answer",
                extra=kv(
                    source=self.name,
                    malformed=snapshot.skipped - snapshot.duplicates,
                    duplicate_call_ids=snapshot.duplicates or None,
                ),
            )
        if cycle.events:
            # One line a poll: at 10k calls and 1 % churn a line per event would be 300
            # lines (and ~5 ms of formatting) every poll. Each event is at debug level.
            log.info("detected", extra=kv(source=self.name, events=len(cycle.events), **cycle.counts))
            if log.isEnabledFor(logging.DEBUG):
                for event in cycle.events:
                    log.debug(event.type, extra=kv(event_id=event.id, call_id=event.call_id))
