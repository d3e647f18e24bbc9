"""Retention: a week of polling with churn at a fast clock keeps the database bounded."""

from __future__ import annotations

from pathlib import Path

from notifier.detect import DetectSettings, detect
from notifier.model import Call, Snapshot
from notifier.route import PlannedDelivery
from notifier.store import PollRecord, Store, deliveries, delivery_events, events

T0 = 1_800_000_000.0
RETENTION = 6 * 3600.0


def test_a_week_of_polling_stays_bounded(tmp_path: Path) -> None:
    store = Store("sqlite:///n.db", {"STATE_DIRECTORY": str(tmp_path)})
    store.upgrade()
    state = store.load_state()
    cfg = DetectSettings(announce_existing=True, stuck_queued_after=0)  # 2 events a poll
    interval = 120.0  # a week in 5040 polls
    sizes, counts = [], []
    for poll in range(int(7 * 86400 / interval)):
        now = T0 + poll * interval
        calls = {f"c{poll - k}": Call(call_id=f"c{poll - k}", status="QUEUED") for k in range(3)}  # churn
        t = detect(state, Snapshot(calls=calls), now, cfg)
        planned = [PlannedDelivery("crm", "all", (e.id,)) for e in t.events]
        store.commit_poll(t, planned, PollRecord(now, 0.01, True, len(calls)))
        state = t.state
        with store.transaction(durable=False) as conn:  # deliveries finish as they go
            conn.execute(
                deliveries.update().where(deliveries.c.status == "pending").values(status="sent", finished_at=now)
            )
        if poll % 30 == 0:  # the daemon prunes on a timer, in batches
            while store.prune(now - RETENTION, batch=200):
                pass
            if poll and poll % 720 == 0:
                sizes.append((tmp_path / "n.db").stat().st_size)
                counts.append(store.count(events))
    window = int(RETENTION / interval) * 2 + 60  # events per retention window, plus one prune period
    assert max(counts) <= window, counts
    assert sizes[-1] <= sizes[1] * 1.1, sizes  # the file stops growing once retention kicks in
    assert store.count(deliveries) <= window
    store.close()


def test_prune_keeps_events_that_pending_deliveries_need(store_url: str) -> None:
    store = Store(store_url)
    store.upgrade()
    t = detect(
        store.load_state(),
        Snapshot(calls={"a": Call(call_id="a"), "b": Call(call_id="b")}),
        T0,
        DetectSettings(announce_existing=True),
    )
    store.commit_poll(t, [PlannedDelivery("crm", "all", (t.events[0].id,))], PollRecord(T0, 0.0, True))
    while store.prune(T0 + 10 * RETENTION):
        pass
    assert [e.id for e in store.events()] == [t.events[0].id]  # the other one was pruned
    assert [d.status for d in store.deliveries()] == ["pending"]
    store.close()


def test_prune_keeps_the_events_of_a_pending_digest(store_url: str) -> None:
    store = Store(store_url)
    store.upgrade()
    calls = {cid: Call(call_id=cid) for cid in "abcd"}
    t = detect(store.load_state(), Snapshot(calls=calls), T0, DetectSettings(announce_existing=True))
    a, b, c, d = (e.id for e in t.events)
    digest = PlannedDelivery("slack", "all", (b, c))
    store.commit_poll(t, [PlannedDelivery("crm", "all", (a,)), digest], PollRecord(T0, 0.0, True))
    assert store.count(delivery_events) == 2  # only the digest's events are linked
    while store.prune(T0 + 10 * RETENTION):
        pass
    assert [e.id for e in store.events()] == [a, b, c]  # d: no delivery needs it
    [(_, single_events), (_, digest_events)] = [
        *store.due_deliveries("crm", T0 + 10 * RETENTION),
        *store.due_deliveries("slack", T0 + 10 * RETENTION),
    ]
    assert [e.id for e in single_events] == [a]
    assert [e.id for e in digest_events] == [b, c]
    store.close()
