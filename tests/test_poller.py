"""The poll cycle in-process: pacing after failures, enrichment bounds, a full disk."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from sqlalchemy import event

from notifier.bland import BlandClient
from notifier.config import Config, load_config
from notifier.poller import MAX_BACKOFF, Poller, next_delay
from notifier.secret import Secret
from notifier.simulator import BlandSimulator, wire_call
from notifier.store import Store
from tests.conftest import write_config


def test_backoff_doubles_to_the_cap_and_honours_retry_after() -> None:
    assert MAX_BACKOFF == 15
    delays = [next_delay(1, n, 3600) for n in range(0, 7)]
    assert delays == [1, 2, 4, 8, 15, 15, 15]  # recovery is seen within 15 s
    assert next_delay(1, 5, 20) == 5  # capped at unreachable_after / 4 when that is smaller
    assert next_delay(30, 5, 60) == 30  # never below the interval
    assert next_delay(0.25, 2, 60) == 1.0
    assert 1.8 <= next_delay(1, 1, 60, jitter=-1) < next_delay(1, 1, 60, jitter=1) <= 2.2
    assert next_delay(1, 1, 60, retry_after=12) == 12
    assert next_delay(1, 1, 60, retry_after=3600) == 15  # never blind for longer than the cap
    # A poll is made when the outage reaches unreachable_after: source.unreachable is on time.
    assert next_delay(1, 5, 3600, until_unreachable=3.5) == 3.5
    assert next_delay(1, 5, 3600, until_unreachable=-1) == 15  # already past: the backoff


def make(tmp_path: Path, sim: BlandSimulator, extra: str = "") -> tuple[Config, Store]:
    path = write_config(tmp_path, sim, "[detect]\nannounce_existing = true\n", source_extra=extra)
    path.write_text(path.read_text().replace('timeout = "2s"', 'timeout = "1s"'))
    config = load_config(path, {"TEST_BLAND_KEY": sim.api_key})
    store = Store(config.storage.url, {"STATE_DIRECTORY": str(tmp_path)})
    store.upgrade()
    return config, store


def client(config: Config) -> BlandClient:
    src = config.source
    return BlandClient(src.base_url, Secret(src.api_key.reveal()), src.org_id, float(src.timeout))


def test_details_enrich_disappeared_events_within_a_bound(tmp_path: Path, sim: BlandSimulator) -> None:
    config, store = make(tmp_path, sim, "fetch_details = true\n")
    sim.set_calls([wire_call("a"), wire_call("b")])
    done = {"status": "completed", "completed": True, "call_length": 1.5, "answered_by": "human",
            "call_ended_by": "USER", "error_message": None}  # fmt: skip
    sim.set_details("a", done)

    async def main() -> list:
        async with client(config) as c:
            poller = Poller(config, store, c, store.load_state())
            await poller.poll()
            sim.set_calls([])
            return (await poller.poll()).events

    events = anyio.run(main)
    outcome = {e.call_id: e.data["outcome"] for e in events}
    assert outcome == {"a": done, "b": None}  # b's details answer 404: the event still goes out, outcome null
    assert [e.data["outcome"] for e in store.events(types=["call.disappeared"])] == [outcome["a"], None]


def test_slow_details_never_hold_the_poll_beyond_the_bound(tmp_path: Path, sim: BlandSimulator) -> None:
    config, store = make(tmp_path, sim, "fetch_details = true\n")
    sim.set_calls([wire_call(f"c{i}") for i in range(20)])

    async def main() -> tuple[float, list]:
        async with client(config) as c:
            poller = Poller(config, store, c, store.load_state())
            await poller.poll()
            sim.set_calls([])
            sim.configure(details_latency=3.0)  # every details request hangs for 3 s
            start = time.monotonic()
            cycle = await poller.poll()
            return time.monotonic() - start, cycle.events

    elapsed, events = anyio.run(main)
    assert elapsed < 2.5  # bounded by the 1 s request timeout, not 20 x 3 s
    assert len(events) == 20 and all(e.data["outcome"] is None for e in events)


def test_a_full_disk_loses_nothing(tmp_path: Path, sim: BlandSimulator) -> None:
    config, store = make(tmp_path, sim)
    limit = {"pages": 0}

    @event.listens_for(store.engine, "begin")
    def _limit(conn) -> None:  # type: ignore[no-untyped-def]
        if limit["pages"]:
            conn.exec_driver_sql(f"PRAGMA max_page_count={limit['pages']}")
        else:
            conn.exec_driver_sql("PRAGMA max_page_count=1073741823")

    sim.set_calls([wire_call("a")])

    async def main() -> tuple:
        async with client(config) as c:
            poller = Poller(config, store, c, store.load_state())
            await poller.poll()
            with store.engine.connect() as conn:
                limit["pages"] = conn.exec_driver_sql("PRAGMA page_count").scalar()
            sim.set_calls([wire_call("a")] + [wire_call(f"n{i}", objective="x" * 2000) for i in range(200)])
            full = await poller.poll()
            limit["pages"] = 0
            again = await poller.poll()
            return full, again

    full, again = anyio.run(main)
    assert not full.ok and full.events == []
    assert again.ok and len(again.events) == 200
    ids = [e.id for e in store.events()]
    assert len(ids) == 201 and len(set(ids)) == 201
    assert ids[1] == ids[0].rsplit("_", 1)[0] + "_0000000002"  # numbering resumed exactly where it was


def test_an_outage_is_declared_on_time_and_recovery_is_seen_within_15s(tmp_path: Path, sim: BlandSimulator) -> None:
    """SPEC: the wait doubles up to min(15 s, unreachable_after / 4), and a poll is made
    when the outage reaches unreachable_after (not a backoff after it)."""
    from notifier.detect import DetectState
    from notifier.model import SourceState

    path = write_config(tmp_path, sim)
    path.write_text(path.read_text().replace('unreachable_after = "1s"', 'unreachable_after = "1m"'))
    config = load_config(path, {"TEST_BLAND_KEY": sim.api_key})
    now = 1_800_000_000.0
    failing = SourceState(ever_succeeded=True, failing_since=now - 55, failures=9)
    poller = Poller(config, None, None, DetectState("i", source=failing), clock=lambda: now)  # type: ignore[arg-type]
    assert poller.delay() == pytest.approx(5.0)  # the outage reaches 1 min in 5 s: poll then
    long_down = SourceState(ever_succeeded=True, failing_since=now - 600, failures=40, unreachable=True)
    poller.state = DetectState("i", source=long_down)
    assert 13.5 <= poller.delay() <= 16.5  # down for long: still polled every 15 s (+-10 % jitter)
