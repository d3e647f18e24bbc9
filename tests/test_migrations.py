"""Migrations on both backends: a first-release database upgrades in place, keeping
its state and event numbering, and the migrated schema is the one the code describes."""

from __future__ import annotations

import msgspec
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from notifier.detect import DetectSettings, detect
from notifier.migrate import upgrade
from notifier.model import Call, CallState, Snapshot, SourceState
from notifier.store import PollRecord, Store, metadata

T0 = 1_800_000_000.0


def test_a_first_release_database_upgrades_in_place(store_url: str) -> None:
    store = Store(store_url)
    upgrade(store.engine, "0001")
    old_call = CallState(call=Call(call_id="a", status="QUEUED"), first_seen=T0 - 60)
    source = SourceState(ever_succeeded=True, last_success=T0 - 5)
    with store.transaction() as conn:
        for key, value in {
            "instance": b"abc123def456",
            "next_seq": b"42",
            "source": msgspec.json.encode(source),
            "timers": b"[120.0,0.0,0.0]",
        }.items():
            conn.execute(text("INSERT INTO meta (key, value) VALUES (:k, :v)"), {"k": key, "v": value})
        conn.execute(
            text("INSERT INTO calls (call_id, status, state) VALUES ('a', 'QUEUED', :s)"),
            {"s": msgspec.msgpack.encode(old_call)},
        )
        conn.execute(
            text(
                "INSERT INTO events (id, type, call_id, detected_at, data) "
                "VALUES ('evt_abc123def456_0000000041', 'call.appeared', 'a', :t, '{}')"
            ),
            {"t": T0 - 60},
        )
    store.upgrade()

    state = store.load_state()
    assert (state.instance, state.next_seq, state.timers) == ("abc123def456", 42, (120.0, 0.0, 0.0))
    assert state.source == source and state.calls == {"a": old_call}
    assert [(e.id, e.call_id) for e in store.events(source="default")] == [("evt_abc123def456_0000000041", "a")]
    # Numbering goes on where it stopped: the next event is number 42 of the same instance.
    t = detect(state, Snapshot(calls={}), T0, DetectSettings())
    store.commit_poll(t, [], PollRecord(T0, 0.0, True))
    assert [e.id for e in store.events()][-1] == "evt_abc123def456_0000000042"
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM meta")).scalar() == 0  # the state moved out
    store.close()


def test_the_migrated_schema_is_the_one_the_code_describes(store_url: str) -> None:
    store = Store(store_url)
    store.upgrade()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    store.close()
    assert diff == []
