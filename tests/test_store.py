"""The store on both backends: migrations, atomic polls, resuming; SQLite's file modes and fsyncs."""

from __future__ import annotations

import sqlite3
import stat
import tempfile
from pathlib import Path

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from sqlalchemy import select

from notifier.detect import DetectSettings, DetectState, Transition, detect
from notifier.model import PollFailure
from notifier.route import PlannedDelivery
from notifier.store import POLL_LOG_KEEP, AttemptRecord, PollRecord, Store, StoreError
from notifier.store.schema import polls
from notifier.store.sqlite import PathError, database_path
from tests.test_detect import T0, call, observations, runs, snap

CFG = DetectSettings(announce_existing=True, stuck_queued_after=60)


def open_store(directory: Path) -> Store:
    return open_url("sqlite:///notifier.db", directory)


def open_url(url: str, directory: Path | None = None) -> Store:
    store = Store(url, {"STATE_DIRECTORY": str(directory)} if directory else {})
    store.upgrade()
    return store


def commit(store: Store, t: Transition, at: float = T0, planned: list[PlannedDelivery] | None = None) -> None:
    store.commit_poll(t, planned or [], PollRecord(at=at, duration=0.01, ok=True, calls=len(t.state.calls)))


def test_relative_path_resolves_against_state_directory(tmp_path: Path) -> None:
    assert database_path("sqlite:///x.db", {"STATE_DIRECTORY": str(tmp_path)}) == tmp_path / "x.db"
    assert database_path("sqlite:////abs/x.db", {"STATE_DIRECTORY": str(tmp_path)}) == Path("/abs/x.db")
    with pytest.raises(PathError):
        database_path("sqlite://", {})
    with pytest.raises(StoreError, match="names no database file"):
        Store("sqlite://", {})


def test_database_and_wal_files_are_private(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    t = detect(store.load_state(), snap(call("a")), T0, CFG)
    reader = sqlite3.connect(tmp_path / "notifier.db")  # an open connection keeps -wal/-shm
    try:
        reader.execute("SELECT count(*) FROM calls").fetchall()
        commit(store, t)
        files = sorted(p.name for p in tmp_path.iterdir())
        assert {"notifier.db", "notifier.db-wal", "notifier.db-shm"} <= set(files)
        for name in ("notifier.db", "notifier.db-wal", "notifier.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        reader.close()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_upgrade_is_idempotent_and_at_head(store_url: str) -> None:
    store = open_url(store_url)
    store.upgrade()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0004"
        tables = set(sqlalchemy.inspect(conn).get_table_names())
    assert {"calls", "events", "polls", "deliveries", "delivery_events", "attempts", "meta"} <= tables
    store.close()


def test_a_poll_is_committed_whole_or_not_at_all(store_url: str) -> None:
    store = open_url(store_url)
    t1 = detect(store.load_state(), snap(call("a")), T0, CFG)
    commit(store, t1)
    t2 = detect(t1.state, snap(call("a", "IN_PROGRESS"), call("b")), T0 + 5, CFG)
    bad = PlannedDelivery(target="ops", rule="r", event_ids=("evt_does_not_exist",))  # violates the FK
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        commit(store, t2, T0 + 5, [bad])
    resumed = store.load_state()
    assert resumed == t1.state  # neither the new call, the status change nor next_seq moved
    assert [e.id for e in store.events()] == [e.id for e in t1.events]
    commit(store, t2, T0 + 5, [PlannedDelivery("ops", "r", (t2.events[0].id,))])
    assert store.load_state() == t2.state
    store.close()


def test_failed_polls_persist_source_health(store_url: str) -> None:
    store = open_url(store_url)
    cfg = DetectSettings(unreachable_after=10)
    state = store.load_state()
    for i in range(3):
        t = detect(state, PollFailure("HTTP 503"), T0 + 6 * i, cfg)
        store.commit_poll(t, [], PollRecord(at=T0 + 6 * i, duration=0.1, ok=False, error="HTTP 503"))
        state = t.state
    reloaded = store.load_state()
    assert reloaded.source.unreachable and reloaded.source.failures == 3
    assert [e.type for e in store.events()] == ["source.unreachable"]
    with store.engine.connect() as conn:
        assert conn.execute(select(polls.c.error).order_by(polls.c.id.desc())).scalars().first() == "HTTP 503"
    store.close()


def test_poll_log_stays_bounded(store_url: str) -> None:
    store = open_url(store_url)
    state = store.load_state()
    for i in range(POLL_LOG_KEEP + 250):
        t = detect(state, snap(), T0 + i, CFG)
        commit(store, t, T0 + i)
        state = t.state
    assert store.count(polls) <= POLL_LOG_KEEP + 100
    store.close()


def test_event_queries(store_url: str) -> None:
    store = open_url(store_url)
    t1 = detect(store.load_state(), snap(call("a"), call("b", "IN_PROGRESS")), T0, CFG)
    commit(store, t1)
    t2 = detect(t1.state, snap(call("b", "IN_PROGRESS")), T0 + 100, CFG)
    commit(store, t2, T0 + 100)
    assert [e.type for e in store.events()] == ["call.appeared", "call.appeared", "call.started", "call.disappeared"]
    assert [e.type for e in store.events(call_id="a")] == ["call.appeared", "call.disappeared"]
    assert [e.type for e in store.events(types=["call.started"])] == ["call.started"]
    assert [e.type for e in store.events(since=T0 + 50)] == ["call.disappeared"]
    assert [e.type for e in store.events(limit=1)] == ["call.disappeared"]
    assert store.events()[0].data["call"]["call_id"] == "a"
    store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs)
def test_resuming_from_the_database_repeats_and_loses_nothing(run: tuple) -> None:
    steps, cfg = run
    obs = observations(steps)
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        straight = open_store(Path(one))
        state = straight.load_state()
        for observation, now in obs:
            t = detect(state, observation, now, cfg)
            commit(straight, t, now)
            state = t.state
        expected = [(e.type, e.call_id, e.detected_at, e.data) for e in straight.events()]
        straight.close()

        for index, (observation, now) in enumerate(obs):
            store = open_store(Path(two))  # a fresh process each poll: the harshest restart
            resumed = store.load_state()
            if index == 0:
                resumed = DetectState(instance=resumed.instance)
            t = detect(resumed, observation, now, cfg)
            commit(store, t, now)
            store.close()
        store = open_store(Path(two))
        got = [(e.type, e.call_id, e.detected_at, e.data) for e in store.events()]
        ids = [e.id for e in store.events()]
        store.close()
    assert got == expected
    assert len(set(ids)) == len(ids)


def test_redeliver_by_event_finds_singles_and_digests(store_url: str) -> None:
    store = open_url(store_url)
    t = detect(DetectState("i"), snap(call("a"), call("b"), call("c")), T0, CFG)
    a, b, c = (e.id for e in t.events)
    commit(store, t, planned=[PlannedDelivery("crm", "all", (a,)), PlannedDelivery("slack", "all", (b, c))])
    for delivery in store.deliveries():
        store.record_attempt(delivery, AttemptRecord(T0, "dead", 410, "gone", 0.01))
    assert store.redeliver(T0, event_id=c) == 1  # inside the digest
    assert [(d.target, d.status) for d in store.deliveries()] == [("crm", "dead"), ("slack", "pending")]
    assert store.redeliver(T0, event_id=a) == 1
    assert {d.status for d in store.deliveries()} == {"pending"}
    store.close()


def test_polls_with_events_are_fsynced_and_quiet_ones_are_not(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    pragmas: list[str] = []

    @sqlalchemy.event.listens_for(store.engine, "before_cursor_execute")
    def record(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("PRAGMA synchronous"):
            pragmas.append(statement.split("=")[1])

    t = detect(DetectState("i"), snap(call("a")), T0, CFG)
    commit(store, t)
    quiet = detect(t.state, snap(call("a")), T0 + 5, CFG)
    assert quiet.events == [] and quiet.changed == []
    commit(store, quiet, at=T0 + 5)
    assert pragmas == ["FULL", "NORMAL"]
    with store.engine.connect() as conn:  # and the quiet poll was still recorded
        assert conn.exec_driver_sql("SELECT count(*) FROM polls").scalar() == 2
    store.close()


def test_active_calls_are_paged_the_longest_queued_first_across_sources(store_url: str) -> None:
    store = Store(store_url)
    store.upgrade()
    try:
        waits = {"a": [500, 300, 100], "b": [400, 200]}  # seconds queued at T0
        for name, ages in waits.items():
            queued = [call(f"{name}{i}", created=T0 - age) for i, age in enumerate(ages)]
            t = detect(
                DetectState(instance=name, name=name),
                snap(*queued, call(f"{name}-p", "IN_PROGRESS")),
                T0,
                DetectSettings(),
            )
            store.commit_poll(t, [], PollRecord(T0, 0.0, True))
        total, page = store.active_calls(status="QUEUED")
        assert total == 5
        assert [cs.call.call_id for _, cs in page] == ["a0", "b0", "a1", "b1", "a2"]
        assert [name for name, _ in page] == ["a", "b", "a", "b", "a"]
        total, page = store.active_calls(status="QUEUED", limit=2, offset=2)
        assert total == 5 and [cs.call.call_id for _, cs in page] == ["a1", "b1"]
        total, page = store.active_calls(source="b")
        assert total == 3 and {cs.call.call_id for _, cs in page} == {"b0", "b1", "b-p"}
        assert store.active_calls(status="QUEUED", offset=5) == (5, [])
        assert store.active_calls(source="nowhere") == (0, [])
    finally:
        store.close()
