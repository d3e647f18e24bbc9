"""Leadership: one daemon of those sharing a store polls, commits and sends.

The lease is one row (``leader``): a holder, an expiry and a term. The term grows on
every change of leader and is the fencing token: a poll commit (and each send batch)
checks it inside its own transaction, so a former leader that was paused or cut off
cannot write once another has taken over. Independently of the store, a holder stops
acting when its lease may have run out by its *own* monotonic clock, measured from
before the request that last renewed it; so a leader that cannot reach the store
goes quiet before anyone else can take over.

Expiry is on the database's clock where several hosts share it (PostgreSQL's
``clock_timestamp()``); SQLite lives on one host, whose clock every daemon shares.
Session-level locks alone would not do: a paused process keeps its connection and
its lock, and wakes up believing it leads.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from notifier.store import Store, error_reason
from notifier.store.postgres import IDLE_IN_TRANSACTION_MS
from notifier.threads import CallTimeout, ThreadsExhausted

#: What a store call may fail with that a later try can cure (a lock, an outage, a partition).
STORE_TROUBLE = (SQLAlchemyError, CallTimeout, ThreadsExhausted)
#: After a failed renewal, try again this soon (within what the lease has left).
RENEW_RETRY = 1.0

#: A holder stops acting this long before its lease can have expired: room for the
#: rate at which two machines' clocks drift apart over one lease, and for the
#: scheduling delay between a check and the action it allows.
SAFETY = 0.1  # of the lease


class LeaseLost(Exception):
    """This daemon no longer leads (the term moved on, or the lease ran out)."""


class LeaseHeld(Exception):
    """Another daemon leads: ``notifier once`` does nothing (exit 75, EX_TEMPFAIL)."""


@dataclass(frozen=True)
class LeaderInfo:
    """The lease row as the store has it."""

    holder: str | None
    host: str | None
    pid: int | None
    term: int
    since: float | None
    expires_at: float
    now: float  # the store's clock when read

    @property
    def held(self) -> bool:
        return self.holder is not None and self.expires_at > self.now

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}" if self.holder else "nobody"


@dataclass(frozen=True)
class Term:
    """A holder's term: the fence a commit verifies inside its transaction."""

    holder: str
    number: int
    #: How long a transaction of the holder may sit idle (``Lease.idle_bound``).
    idle_bound: Callable[[], float] = field(default=lambda: math.inf, compare=False, repr=False)

    def verify(self, conn: Connection) -> None:
        _let_go_within(conn, self.idle_bound())
        row = conn.execute(text("SELECT holder, term FROM leader WHERE id = 1" + _for_share(conn))).first()
        if row is None or row.holder != self.holder or row.term != self.number:
            raise LeaseLost(f"term {self.number} is over (the store is at term {row.term if row else '?'})")


def _for_share(conn: Connection) -> str:
    """PostgreSQL: hold the lease row still until the commit ends (a takeover waits for
    it), while several sources' commits go on side by side. SQLite's write lock already
    serialises everything."""
    return " FOR SHARE" if conn.dialect.name == "postgresql" else ""


def _let_go_within(conn: Connection, seconds: float) -> None:
    """PostgreSQL: end this transaction (and its session) if it sits idle longer than
    ``seconds``. A transaction that locks the lease row makes a takeover wait for it,
    so a holder paused inside one (SIGSTOP, a frozen VM) must let go by the time its
    lease runs out in the store, not after the server's general bound. SQLite: nothing
    to do (one host; its busy timeout bounds the wait)."""
    if conn.dialect.name == "postgresql":
        idle = max(1, math.ceil(min(seconds * 1000, IDLE_IN_TRANSACTION_MS)))
        conn.execute(text("SELECT set_config('idle_in_transaction_session_timeout', :idle, true)"), {"idle": str(idle)})


def _now_sql(conn: Connection) -> str:
    """The store's clock, in epoch seconds, as SQL (bound as :local on SQLite)."""
    return "extract(epoch from clock_timestamp())" if conn.dialect.name == "postgresql" else ":local"


@cache
def _node() -> str:
    """This kernel boot and PID namespace: holders that share it see one process table,
    so a holder's pid says for certain whether it still runs."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "unknown"
    return hashlib.sha256(f"{boot}:{pidns}".encode()).hexdigest()[:12]


def new_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_node()}:{secrets.token_hex(4)}"


def _dead_here(holder: str | None) -> bool:
    """Whether ``holder`` is a process of this node that no longer exists (a crash:
    its restart need not wait for the lease to run out)."""
    if not holder:
        return False
    _host, pid, node, _token = (holder.rsplit(":", 3) + ["", "", "", ""])[:4]
    if node != _node() or node == "unknown" or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


class Lease:
    """One daemon's side of the lease: attempt, renew, release, and whether it may act now."""

    def __init__(
        self,
        store: Store,
        duration: float,
        holder: str | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.duration = duration
        self.holder = holder or new_holder_id()
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.term: Term | None = None
        self._valid_until = -1.0
        self._monotonic = monotonic
        self._clock = clock

    def held(self) -> bool:
        """Whether this daemon may poll, commit and send right now (its own clock)."""
        return self.term is not None and self._monotonic() < self._valid_until

    def remaining(self) -> float:
        """Seconds this daemon may still act without a renewal."""
        return max(0.0, self._valid_until - self._monotonic()) if self.term is not None else 0.0

    def idle_bound(self) -> float:
        """How long a transaction of this holder may sit idle: until its lease can have
        run out in the store, which is ``SAFETY`` later than by its own clock. (A
        renewal in its last moments is not cut off for a pause of a few milliseconds.)"""
        return self.remaining() + self.duration * SAFETY

    def attempt(self) -> bool:
        """Take the lease if nobody holds it, it has expired, it is ours already (an
        earlier attempt whose answer was given up on, which must not leave the lease
        held by nobody that acts), or its holder is a process of this node that has
        died: a new term. True if taken."""
        started = self._monotonic()
        take = (
            "UPDATE leader SET holder = :holder, host = :host, pid = :pid, term = term + 1, "
            "since = {now}, expires_at = {now} + :duration WHERE id = 1 AND ({free}) RETURNING term"
        )
        with self.store.transaction() as conn:
            _let_go_within(conn, self.duration)  # the lease it may take: until it runs out in the store
            now = _now_sql(conn)
            free = f"holder IS NULL OR expires_at <= {now} OR holder = :holder"
            row = conn.execute(text(take.format(now=now, free=free)), self._params()).first()
            if row is None:
                current = conn.execute(text("SELECT holder FROM leader WHERE id = 1")).scalar()
                if _dead_here(current):
                    row = conn.execute(
                        text(take.format(now=now, free="holder = :dead")), {**self._params(), "dead": current}
                    ).first()
        if row is None:
            return False
        self.term = Term(self.holder, row.term, self.idle_bound)
        self._valid_until = started + self.duration * (1 - SAFETY)
        return True

    def renew(self) -> bool:
        """Extend the lease of the current term. False (and no longer held) if it was lost."""
        term = self.term
        if term is None:
            return False
        started = self._monotonic()
        with self.store.transaction(durable=False) as conn:
            _let_go_within(conn, self.idle_bound())
            now = _now_sql(conn)
            row = conn.execute(
                text(
                    f"UPDATE leader SET expires_at = {now} + :duration "
                    "WHERE id = 1 AND holder = :holder AND term = :term RETURNING term"
                ),
                {**self._params(), "term": term.number},
            ).first()
        if self.term != term:  # stepped down meanwhile (a renewal abandoned at its deadline)
            return False
        if row is None:
            self.step_down()
            return False
        self._valid_until = started + self.duration * (1 - SAFETY)
        return True

    def release(self) -> None:
        """Give the lease up now (a clean stop): a standby takes over at its next attempt."""
        if self.term is None:
            return
        term, self.term = self.term, None
        with self.store.transaction() as conn:
            conn.execute(
                text(
                    "UPDATE leader SET holder = NULL, expires_at = 0 WHERE id = 1 AND holder = :holder AND term = :term"
                ),
                {"holder": term.holder, "term": term.number},
            )

    def step_down(self) -> None:
        """Forget the term locally (the store has moved on, or can no longer be trusted)."""
        self.term = None
        self._valid_until = -1.0

    def check(self) -> Term:
        """The current term, or LeaseLost if this daemon may not act now."""
        if not self.held():
            raise LeaseLost("the lease ran out before it could be renewed")
        assert self.term is not None
        return self.term

    def _params(self) -> dict[str, object]:
        return {
            "holder": self.holder,
            "host": self.host,
            "pid": self.pid,
            "duration": self.duration,
            "local": self._clock(),
        }


def read_leader(store: Store, clock: Callable[[], float] = time.time) -> LeaderInfo | None:
    """Who leads, as the store says (None: a store without the lease row yet)."""
    with store.engine.connect() as conn:
        now = _now_sql(conn)
        row = conn.execute(
            text(f"SELECT holder, host, pid, term, since, expires_at, {now} AS now FROM leader WHERE id = 1"),
            {"local": clock()},
        ).first()
    if row is None:
        return None
    return LeaderInfo(row.holder, row.host, row.pid, row.term, row.since, row.expires_at, float(row.now))


StoreCall = Callable[..., Awaitable[Any]]


async def keep(
    lease: Lease,
    ask: StoreCall,
    on_error: Callable[[Exception], None] = lambda exc: None,
    on_renewed: Callable[[], None] = lambda: None,
) -> None:
    """Renew the lease well inside its duration, until cancelled. Raises LeaseLost once
    it may have run out without a renewal (or another daemon holds it); a store that
    fails or does not answer is retried within what the lease has left.

    ``ask(fn, timeout=...)`` runs a store call bounded in time (``ThreadBudget.call``).
    """
    every = lease.duration / 3
    wait = every
    while True:
        await anyio.sleep(wait)
        try:
            renewed = await ask(lease.renew, timeout=lease.remaining())
        except STORE_TROUBLE as exc:
            on_error(exc)
            if not lease.held():
                raise LeaseLost(f"could not renew the lease: {error_reason(exc)}") from None
            wait = min(RENEW_RETRY, lease.remaining())
            continue
        if not renewed:
            raise LeaseLost("another daemon holds the lease")
        on_renewed()
        wait = every
