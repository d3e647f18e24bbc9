"""The leadership lease on both backends, and a state-machine test of its fencing."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from notifier.detect import DetectSettings, detect
from notifier.lease import SAFETY, Lease, LeaseLost, Term, _node, read_leader
from notifier.model import Call, Snapshot
from notifier.store import PollRecord, StaleState, Store
from tests.test_detect import T0, call, snap

CFG = DetectSettings(announce_existing=True)


class Clock:
    """One clock for the store's 'now' (SQLite) and every holder's monotonic clock."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(store_url: str):  # type: ignore[no-untyped-def]
    s = Store(store_url)
    s.upgrade()
    yield s
    s.close()


def test_one_holder_at_a_time_and_each_leader_change_is_a_new_term(store: Store) -> None:
    a, b = Lease(store, 0.5, "a"), Lease(store, 0.5, "b")
    assert a.attempt() and a.term is not None and a.term.number == 1
    assert not b.attempt() and b.term is None
    assert a.renew() and a.held()
    info = read_leader(store)
    assert info is not None and info.holder == "a" and info.held and info.term == 1
    time.sleep(0.6)  # a stops renewing: the lease runs out on the store's clock
    assert not a.held()  # and a knows it by its own clock, before anyone took over
    assert b.attempt() and b.term is not None and b.term.number == 2
    assert not a.renew() and a.term is None  # deposed: it learns at its next renewal


def test_a_clean_release_is_taken_over_at_once(store: Store) -> None:
    a, b = Lease(store, 30, "a"), Lease(store, 30, "b")
    assert a.attempt()
    a.release()
    assert not a.held()
    assert b.attempt() and b.term is not None and b.term.number == 2
    info = read_leader(store)
    assert info is not None and info.holder == "b"


def test_a_deposed_leader_commits_nothing(store: Store) -> None:
    a, b = Lease(store, 0.3, "a"), Lease(store, 30, "b")
    assert a.attempt()
    state = store.load_state()
    first = detect(state, snap(call("x")), T0, CFG)
    store.commit_poll(first, [], PollRecord(T0, 0.0, True), a.check())
    fence = a.check()  # taken while a still led: a paused process holds such a token
    time.sleep(0.35)
    assert b.attempt()
    late = detect(first.state, snap(call("x"), call("y")), T0 + 1, CFG)
    with pytest.raises(LeaseLost, match="term 1 is over"):
        store.commit_poll(late, [], PollRecord(T0 + 1, 0.0, True), fence)
    with pytest.raises(LeaseLost):
        a.check()
    assert [e.call_id for e in store.events()] == ["x"]  # y was never recorded
    resumed = store.load_state()  # b resumes from what a committed
    assert set(resumed.calls) == {"x"}
    store.commit_poll(
        detect(resumed, snap(call("x"), call("y")), T0 + 2, CFG), [], PollRecord(T0, 0.0, True), b.check()
    )
    assert [e.call_id for e in store.events()] == ["x", "y"]


def test_a_commit_that_does_not_continue_the_stored_state_is_refused(store: Store) -> None:
    state = store.load_state()
    one = detect(state, snap(call("a")), T0, CFG)
    store.commit_poll(one, [], PollRecord(T0, 0.0, True))
    fork = detect(state, snap(call("b")), T0, CFG)  # from the state before `one`: the same event ids
    with pytest.raises(StaleState, match="the store is at event 2, this poll started from 1"):
        store.commit_poll(fork, [], PollRecord(T0, 0.0, True))
    assert [e.call_id for e in store.events()] == ["a"]


def test_a_crashed_holder_on_this_machine_is_taken_over_without_waiting(store: Store) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    elsewhere = Lease(store, 3600, f"host:{pid}:othernode:abcd")  # that pid means nothing on another node
    assert elsewhere.attempt()
    assert not Lease(store, 3600).attempt()  # so its lease is waited out
    elsewhere.release()
    crashed = Lease(store, 3600, f"host:{pid}:{_node()}:abcd")
    assert crashed.attempt()
    successor = Lease(store, 3600)
    assert successor.attempt() and successor.term is not None and successor.term.number == 3


def test_validity_is_measured_from_before_the_request(store_url: str) -> None:
    clock = Clock()
    store = Store(store_url)
    store.upgrade()
    lease = Lease(store, 10, "a", monotonic=clock, clock=clock)
    assert lease.attempt()
    assert lease.remaining() == pytest.approx(10 * (1 - SAFETY))
    clock.now += 10 * (1 - SAFETY)
    assert not lease.held()
    store.close()


class LeaseMachine(RuleBasedStateMachine):
    """Holders attempt, renew, release, pause (time passes while they do nothing) and
    commit polls. However the steps interleave, at most one holder believes it leads at
    any instant, and every commit that lands belongs to the term current at that moment,
    with terms never going back."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = Clock()
        self.store = Store(f"sqlite:///{Path(self.dir.name) / 'n.db'}")
        self.store.upgrade()
        self.leases = [Lease(self.store, 10, f"h{i}", monotonic=self.clock, clock=self.clock) for i in range(3)]
        self.states = [None, None, None]  # each holder's detection state, loaded when it takes the lease
        self.landed: list[tuple[int, str]] = []  # (term, holder) of each commit that went through
        self.polls = 0

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()

    @rule(i=st.integers(0, 2))
    def attempt(self, i: int) -> None:
        if self.leases[i].attempt():
            self.states[i] = self.store.load_state()  # type: ignore[call-overload]

    @rule(i=st.integers(0, 2))
    def renew(self, i: int) -> None:
        if self.leases[i].held():  # a daemon renews only while it leads
            self.leases[i].renew()

    @rule(i=st.integers(0, 2))
    def release(self, i: int) -> None:
        if self.leases[i].held():
            self.leases[i].release()

    @rule(seconds=st.sampled_from([0.5, 1.0, 4.0, 8.9, 9.5, 10.0, 12.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(i=st.integers(0, 2))
    def commit(self, i: int) -> None:
        lease = self.leases[i]
        try:
            fence = lease.check()
        except LeaseLost:
            return
        state = self.states[i]
        assert state is not None
        self.polls += 1
        new = f"c{self.polls}"
        t = detect(state, Snapshot(calls={new: Call(call_id=new, status="QUEUED")}), self.clock.now, CFG)
        try:
            self.store.commit_poll(t, [], PollRecord(self.clock.now, 0.0, True), fence)
        except LeaseLost:
            return
        self.states[i] = t.state
        self.landed.append((fence.number, lease.holder))

    @precondition(lambda self: self.landed)
    @invariant()
    def one_holder_per_term_and_terms_only_grow(self) -> None:
        holders: dict[int, str] = {}
        for term, holder in self.landed:
            assert holders.setdefault(term, holder) == holder
        terms = [term for term, _ in self.landed]
        assert terms == sorted(terms)

    @invariant()
    def at_most_one_believes_it_leads(self) -> None:
        assert sum(lease.held() for lease in self.leases) <= 1

    @invariant()
    def event_ids_stay_unique(self) -> None:
        ids = [e.id for e in self.store.events()]
        assert len(ids) == len(set(ids))


LeaseMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_lease_state_machine = LeaseMachine.TestCase


def test_a_holder_paused_inside_a_fenced_commit_lets_go_when_its_lease_runs_out(postgres_url: str) -> None:
    """A SIGSTOP at the wrong moment leaves the leader inside a commit, holding the lease
    row: the takeover must come when the lease runs out, not when the server's general
    idle bound (10 s) ends the session."""
    store = Store(postgres_url)
    store.upgrade()
    paused, standby = Lease(store, 1.0, "paused"), Lease(store, 1.0, "standby")
    assert paused.attempt()
    started = time.monotonic()
    with store.engine.connect() as conn:
        paused.check().verify(conn)  # ... and the process stops here, its transaction open
        while not standby.attempt():
            time.sleep(0.05)
        took = time.monotonic() - started
        with pytest.raises(Exception, match="idle-in-transaction"):
            conn.exec_driver_sql("SELECT 1")  # the server ended the paused session
    store.close()
    assert standby.term is not None and standby.term.number == 2
    assert 1.0 <= took <= 1.0 + 0.5, took


def test_an_attempt_whose_answer_was_lost_is_taken_again_by_its_holder(store: Store) -> None:
    """A daemon gave up waiting for its attempt, which still landed: it must not leave the
    lease held by nobody that acts until it runs out."""
    a = Lease(store, 3600, "a")
    assert a.attempt()
    a.step_down()  # what giving up on the answer leaves behind: a row that names a
    assert not Lease(store, 3600, "b").attempt()
    assert a.attempt() and a.term is not None and a.term.number == 2  # a new term all the same


def test_a_password_in_the_url_is_never_shown() -> None:
    from notifier.store import display_url, url_passwords

    for url in (
        "postgresql+psycopg://u:Secret99@db/x",
        "postgresql+psycopg://u@db/x?password=Secret99&sslmode=require",
    ):
        assert url_passwords(url) == ["Secret99"]
        assert "Secret99" not in display_url(url) and "db/x" in display_url(url)
    assert url_passwords("sqlite:///n.db") == []


def test_a_deposed_leader_sends_nothing(tmp_path: Path, store: Store) -> None:
    """Each batch of sends checks the term in the store, and each send the lease by the
    daemon's own clock: no message leaves a daemon that no longer leads."""
    import anyio

    from notifier.outbox import Dispatcher
    from notifier.route import PlannedDelivery
    from tests.conftest import crm_config
    from tests.receivers import Receiver

    with Receiver() as rx:
        config = crm_config(tmp_path, store.url, rx.url)
        t = detect(store.load_state(), snap(call("a"), call("b")), time.time(), CFG)
        store.commit_poll(t, [PlannedDelivery("crm", "all", (e.id,)) for e in t.events], PollRecord(T0, 0.0, True))

        def pass_once(fence) -> BaseException | None:  # type: ignore[no-untyped-def]
            try:
                anyio.run(Dispatcher(store, config, fence=fence).pass_once)
            except BaseExceptionGroup as group:
                return group.exceptions[0]
            return None

        # Taken over in the store: the batch is refused (the daemon still believes it leads).
        old, new = Lease(store, 30, "old"), Lease(store, 30, "new")
        assert old.attempt()
        old.release()
        old.term = Term("old", 1)  # what a paused process still holds
        old._valid_until = time.monotonic() + 30
        assert new.attempt()
        assert isinstance(pass_once(old.check), LeaseLost)
        # Its own clock says the lease may have run out: nothing is sent either.
        clock = Clock(time.monotonic())
        lapsed = Lease(store, 2, "lapsed", monotonic=clock)
        new.release()
        assert lapsed.attempt()
        clock.now += 2
        assert isinstance(pass_once(lapsed.check), LeaseLost)
        assert rx.received == []
        # The leader sends.
        assert lapsed.attempt() and pass_once(lapsed.check) is None  # (its own lease again: a new term)
        assert len(rx.received) == 2


def test_the_leader_renews_three_times_a_lease() -> None:
    import anyio

    from notifier.lease import keep

    with tempfile.TemporaryDirectory() as directory:
        store = Store(f"sqlite:///{directory}/n.db")
        store.upgrade()
        lease = Lease(store, 1.5, "a")
        assert lease.attempt()
        renewed: list[float] = []

        async def ask(fn, timeout: float):  # type: ignore[no-untyped-def]
            return await anyio.to_thread.run_sync(fn)

        async def main() -> None:
            with anyio.move_on_after(1.6):
                await keep(lease, ask, on_renewed=lambda: renewed.append(time.monotonic()))

        anyio.run(main)
        store.close()
    assert len(renewed) == 3, renewed  # every lease / 3 = 0.5 s
    assert lease.held()
