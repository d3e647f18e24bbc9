"""The outbox dispatcher: sends due deliveries, one worker per target.

Deliveries are rows written in the same transaction as their events, so nothing is
lost between detection and sending. Each target has its own worker, so a slow or
failing target never delays another; within a target, attempts follow event order,
and a row waiting in backoff does not hold back the rows behind it. Delivery is at
least once: a crash between sending and recording resends, with the same event id.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from sqlalchemy.exc import SQLAlchemyError

from notifier.channels import Channel, Message, Outcome, make_channel
from notifier.config import Config, Target
from notifier.durations import format_duration
from notifier.logs import kv, log
from notifier.model import Event
from notifier.quiet import DEFERRED, judge_hops
from notifier.secret import redact
from notifier.store import AttemptRecord, Delivery, Fence, Store, error_reason

#: A worker with nothing due re-checks the store this often (rows re-queued by
#: ``notifier redeliver`` in another process are picked up within this time).
IDLE_CHECK = 5.0
BATCH = 50
#: First wait before retrying an attempt's record that the store refused (doubling, up to 10 s).
RECORD_RETRY = 0.5


def backoff(attempt: int, initial: float, maximum: float, jitter: float = 0.0) -> float:
    """Delay before retry number ``attempt`` (1-based): doubling from ``initial`` up to
    ``maximum``, spread by ``jitter`` in [-1, 1] (±20 %) so retries do not synchronise."""
    base = min(maximum, initial * 2 ** min(attempt - 1, 40))
    return min(maximum, base * (1 + 0.2 * jitter))


def next_step(delivery: Delivery, target: Target, outcome: Outcome, at: float, jitter: float) -> AttemptRecord:
    """Decide what an attempt's outcome means for its delivery: sent, retry when, or dead."""
    if outcome.ok:
        return AttemptRecord(at, "sent", outcome.status_code, None, 0.0)
    if outcome.dead:
        return AttemptRecord(at, "dead", outcome.status_code, outcome.error, 0.0)
    first = delivery.first_attempt_at if delivery.first_attempt_at is not None else at
    if at - first >= target.give_up_after:
        error = f"{outcome.error}; gave up after {format_duration(at - first)}"
        return AttemptRecord(at, "dead", outcome.status_code, error, 0.0)
    delay = backoff(delivery.attempts + 1, target.retry_initial, target.retry_max, jitter)
    if outcome.retry_after is not None:  # honoured, up to retry_max (a receiver may ask for years)
        delay = max(delay, min(outcome.retry_after, target.retry_max))
    # The last try is made when the give-up window closes, not a backoff after it.
    retry_at = min(at + delay, max(first + target.give_up_after, at))
    return AttemptRecord(at, "failed", outcome.status_code, outcome.error, 0.0, retry_at)


@dataclass
class _Worker:
    target: Target
    wake: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class Dispatcher:
    """``fence`` gives the leadership term to check before each batch and each send (it
    raises ``LeaseLost`` when this daemon may no longer send); None: unfenced."""

    def __init__(
        self,
        store: Store,
        config: Config,
        clock: Callable[[], float] = time.time,
        on_attempt: Callable[[Delivery, str], None] | None = None,
        fence: Callable[[], Fence] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.on_attempt = on_attempt
        self.fence = fence
        self._workers: dict[str, _Worker] = {}
        self._tg: TaskGroup | None = None
        self._stopping = False
        self._in_flight = 0
        self._idle = anyio.Event()
        self._last_send: dict[str, float] = {}

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Run one worker per target until cancelled (see ``drain``)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self.update(self.config)
            await anyio.sleep_forever()

    async def retire_removed_targets(self) -> None:
        """Deliveries queued for a target that is no longer configured would wait forever
        (and count in the queue metrics): they are dead, with the reason."""
        try:
            retired = await anyio.to_thread.run_sync(self.store.retire_targets, list(self.config.targets), self.clock())
        except SQLAlchemyError as exc:
            log.error("could not retire deliveries of removed targets", extra=kv(error=error_reason(exc)))
            return
        if retired:
            log.warning("deliveries to removed targets are dead (redeliver re-queues them)", extra=kv(count=retired))

    async def release_held(self) -> None:
        try:
            released = await anyio.to_thread.run_sync(self.store.release_held, self.clock())
        except SQLAlchemyError as exc:
            log.error("could not release held deliveries after a reload", extra=kv(error=error_reason(exc)))
            return
        if released:
            log.info("held deliveries are judged again under the new config", extra=kv(count=released))
            self.wake()

    def update(self, config: Config) -> None:
        """Apply a (re)loaded config: start, restart or stop workers as targets changed."""
        self.config = config
        if self._tg is None:
            return
        for name, worker in list(self._workers.items()):
            if config.targets.get(name) != worker.target:
                worker.scope.cancel()
                del self._workers[name]
        for name, target in config.targets.items():
            if name not in self._workers:
                worker = _Worker(target)
                self._workers[name] = worker
                self._tg.start_soon(self._run_worker, worker)

    def wake(self, targets: Iterable[str] | None = None) -> None:
        """New rows were committed: the named targets' workers look now, not at their next check."""
        for name in self._workers if targets is None else targets:
            worker = self._workers.get(name)
            if worker is not None:
                worker.wake.set()

    async def drain(self, timeout: float) -> bool:
        """Stop taking new rows; wait up to ``timeout`` for in-flight sends. True if all finished."""
        self._stopping = True
        self.wake()
        with anyio.move_on_after(timeout):
            while self._in_flight:
                self._idle = anyio.Event()
                await self._idle.wait()
            return True
        return False

    async def pass_once(self) -> int:
        """Send every delivery that is due now, once (``notifier once``); returns attempts made."""
        made = 0

        async def one_target(target: Target) -> None:
            nonlocal made
            channel = make_channel(target)
            try:
                made += await self._send_due(target, channel)
            finally:
                await channel.aclose()

        async with anyio.create_task_group() as tg:
            for target in self.config.targets.values():
                tg.start_soon(one_target, target)
        return made

    # -- workers ------------------------------------------------------------------------

    async def _run_worker(self, worker: _Worker) -> None:
        target = worker.target
        channel = make_channel(target)
        try:
            with worker.scope:
                while not self._stopping:
                    try:
                        if await self._send_due(target, channel):
                            continue
                        next_due = await anyio.to_thread.run_sync(
                            self.store.next_due, target.name, abandon_on_cancel=True
                        )
                    except SQLAlchemyError as exc:  # a locked or full disk: wait, then try again
                        log.error("outbox unavailable", extra=kv(target=target.name, error=error_reason(exc)))
                        next_due = None
                    wait = IDLE_CHECK if next_due is None else min(IDLE_CHECK, max(0.0, next_due - self.clock()))
                    with anyio.move_on_after(wait):
                        await worker.wake.wait()
                    worker.wake = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True):
                await channel.aclose()

    async def _send_due(self, target: Target, channel: Channel) -> int:
        fence = self.fence() if self.fence is not None else None
        # Reads are abandoned, not awaited, when the term ends: a store that does not
        # answer must not keep a deposed daemon from standing down.
        batch = await anyio.to_thread.run_sync(
            self.store.due_deliveries,
            target.name,
            self.clock(),
            BATCH,
            fence,
            target.retry_max + 1.0,  # a clock set back does not hold retries for as long
            abandon_on_cancel=True,
        )
        outcomes: Counter[str] = Counter()
        batch = await self._quieted(target, batch, outcomes)
        for delivery, events in batch:
            if self._stopping:
                break
            pause = self._last_send.get(target.name, -math.inf) + target.min_interval - time.monotonic()
            if pause > 0:  # min_interval: this worker waits, no other target does
                await anyio.sleep(pause)
            if self.fence is not None:
                self.fence()  # the lease may have run out since the batch was read
            self._last_send[target.name] = time.monotonic()
            outcomes[await self._attempt(target, channel, delivery, events)] += 1
        if outcomes:  # one line a batch; each attempt is at debug level (failures: warning)
            log.info("delivery batch", extra=kv(target=target.name, **outcomes))
        return outcomes.total()

    async def _quieted(
        self, target: Target, batch: list[tuple[Delivery, list[Event]]], outcomes: Counter[str]
    ) -> list[tuple[Delivery, list[Event]]]:
        """Judge each due delivery again, now: a silence made since it was queued, or a
        mute a reload extended, still applies. Deliveries a mute held, released together,
        become one digest (Apprise targets, more than the rule's ``digest_after``).
        Returns what is to be sent now."""
        if not batch:
            return batch
        now = self.clock()
        silences = await anyio.to_thread.run_sync(self.store.silences, now, abandon_on_cancel=True)
        judge = judge_hops(now, silences)
        rules = {rule.name: rule for rule in self.config.rules}
        send: list[tuple[Delivery, list[Event]]] = []
        released: set[str] = set()  # rules some held delivery of which is free now
        for delivery, events in batch:
            rule = rules.get(delivery.rule)
            verdicts = [judge(rule, target.name, event) for event in events]
            quiet = next((v for v in verdicts if not v.sends), None)
            if quiet is not None and all(not v.sends for v in verdicts):  # a digest: quiet when all are
                status = "pending" if quiet.action == DEFERRED else quiet.action
                await anyio.to_thread.run_sync(self.store.quiet, delivery.id, status, quiet.reason, now, quiet.until)
                outcomes[quiet.action] += 1
                if status != "pending" and self.on_attempt is not None:
                    self.on_attempt(delivery, status)
                continue
            if quiet is not None:  # a digest some of whose events are quiet now: those leave it
                peeled = [
                    (e.id, v.action, v.reason or "") for e, v in zip(events, verdicts, strict=True) if not v.sends
                ]
                if all(action in ("silenced", "inhibited", "muted") for _, action, _ in peeled):
                    await anyio.to_thread.run_sync(self.store.peel, delivery, peeled, now)
                    outcomes.update(action for _, action, _ in peeled)
                    events = [e for e, v in zip(events, verdicts, strict=True) if v.sends]
            if delivery.quieted_by is not None and rule is not None:
                released.add(rule.name)
            send.append((delivery, events))
        digested: set[int] = set()
        for name in released:
            limit = rules[name].digest_after
            if not (target.name in self.config.digestible and limit):
                continue
            every = await anyio.to_thread.run_sync(self.store.held_due, target.name, name, now)
            if len(every) <= limit or await anyio.to_thread.run_sync(self.store.digest_held, every, now) is None:
                continue
            digested.update(every)
            outcomes["digested"] += len(every)
        return [(d, events) for d, events in send if d.id not in digested]

    async def _attempt(self, target: Target, channel: Channel, delivery: Delivery, events: list[Event]) -> str:
        """One send and its record; returns the outcome (sent, failed or dead)."""
        rule = next((r for r in self.config.rules if r.name == delivery.rule), None)
        at = self.clock()
        started = time.perf_counter()
        self._in_flight += 1
        try:
            if not events:
                outcome = Outcome(ok=False, dead=True, error="its events are no longer stored")
            else:
                outcome = await _send_guarded(target, channel, Message(events=events, rule=rule, attempt_at=at))
            latency = time.perf_counter() - started
            if outcome.error:  # a receiver may echo the URL's token or the secret: never store them
                outcome = dataclasses.replace(outcome, error=redact(outcome.error, target.secrets()))
            step = next_step(delivery, target, outcome, at, random.uniform(-1, 1))
            record = AttemptRecord(step.at, step.outcome, step.status_code, step.error, latency, step.next_attempt_at)
            await self._record(target, delivery, record)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        self._log(target, delivery, record)
        if self.on_attempt is not None:
            self.on_attempt(delivery, record.outcome)
        return record.outcome

    async def _record(self, target: Target, delivery: Delivery, record: AttemptRecord) -> None:
        """The send happened: retry its record until the store takes it, rather than let
        the row look unsent and be sent again. (A stop, or the end of the term, gives up:
        then the next leader resends it, with the same webhook-id.)"""
        delay = RECORD_RETRY
        while True:
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.store.record_attempt, delivery, record)
                return
            except SQLAlchemyError as exc:
                log.error(
                    "could not record a delivery attempt; retrying the record, not the send",
                    extra=kv(target=target.name, delivery=delivery.id, error=error_reason(exc)),
                )
                if self._stopping:
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _log(self, target: Target, delivery: Delivery, record: AttemptRecord) -> None:
        context = kv(
            target=target.name,
            delivery=delivery.id,
            event_id=delivery.event_id,
            attempt=delivery.attempts + 1,
            status=record.status_code,
            error=record.error,
        )
        if record.outcome == "sent":
            log.debug("delivered", extra=context)
        elif record.outcome == "dead":
            log.error("delivery is dead (notifier redeliver re-queues it)", extra=context)
        else:
            retry = format_duration((record.next_attempt_at or record.at) - record.at)
            log.warning(f"delivery failed; retrying in {retry}", extra=context)


async def _send_guarded(target: Target, channel: Channel, message: Message) -> Outcome:
    """One send; a channel bug is a failed outcome, never an exception that would stop
    the worker (or the poll loop) that asked."""
    try:
        return await channel.send(message)
    except Exception as exc:
        log.exception("channel failed unexpectedly", extra=kv(target=target.name))
        return Outcome(ok=False, error=f"internal error: {type(exc).__name__}")


async def send_unrecorded(event: Event, config: Config, clock: Callable[[], float] = time.time) -> None:
    """Send an event that cannot be stored (the store itself is failing) straight to the
    targets its rules name: once, without retries, each target within its own deadline.
    Best effort by nature: it is what a blind daemon can still say."""
    from notifier.route import route

    async def one(target: Target, rule: Any) -> None:
        channel = make_channel(target)
        try:
            outcome = await _send_guarded(target, channel, Message(events=[event], rule=rule, attempt_at=clock()))
        finally:
            await channel.aclose()
        context = kv(target=target.name, event=event.type, error=outcome.error)
        if outcome.ok:
            log.warning("sent without recording it (the store is failing)", extra=context)
        else:
            log.error("could not send (and could not record) a store alert", extra=context)

    async with anyio.create_task_group() as tg:
        for hop in route(event, config.rules):
            target = config.targets.get(hop.target)
            if target is not None:
                tg.start_soon(one, target, hop.rule)


def send_test(target: Target, clock: Callable[[], float] = time.time) -> Outcome:
    """``notifier test``: one clearly marked ``notifier.test`` message, no store involved."""
    now = clock()
    event = Event(
        id=f"evt_test_{int(now * 1000)}",
        type="notifier.test",
        detected_at=now,
        data={"message": "Test notification from bland-notifier: this target works."},
    )

    async def send() -> Outcome:
        channel = make_channel(target)
        try:
            return await channel.send(Message(events=[event], rule=None, attempt_at=now))
        finally:
            await channel.aclose()

    return anyio.run(send)
