"""At-least-once delivery across SIGKILLs: a real daemon, a real receiver, 500 events."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from notifier.simulator import BlandSimulator, wire_call
from tests.conftest import DaemonProcess, announce_to, cli_env, from_store, wait_for, write_config
from tests.receivers import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def stored_event_ids(directory: Path) -> list[str]:
    return from_store(directory, lambda store: [e.id for e in store.events(limit=None)])


def test_sigkill_during_a_burst_loses_nothing(tmp_path: Path, sim: BlandSimulator) -> None:
    with Receiver(SECRET) as rx:
        rx.respond(200, hang=0.004)
        write_config(tmp_path, sim, announce_to(rx.url, secret=SECRET))
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call(f"burst-{i}") for i in range(500)])
        kills = 0
        for threshold in (40, 160, 300, 420):
            daemon = DaemonProcess(tmp_path, env)
            wait_for(lambda: len(rx.received) >= threshold, timeout=60)  # noqa: B023
            daemon.kill()
            kills += 1
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: len({r.headers["webhook-id"] for r in rx.received}) >= 500, timeout=60)
        assert daemon.stop() == 0
        # A line per batch of up to 50 attempts at info level, not one per message.
        batches = [line for line in daemon.log.splitlines() if "delivery batch target=crm sent=" in line]
        assert batches and "delivered" not in daemon.log

        ids = stored_event_ids(tmp_path)
        assert len(ids) == 500 and len(set(ids)) == 500  # detection itself never repeated
        received = Counter(r.headers["webhook-id"] for r in rx.received)
        assert set(received) == set(ids)  # every event arrived
        bodies: dict[str, bytes] = {}
        for r in rx.received:  # a duplicate is the same event: same id, same body
            assert bodies.setdefault(r.headers["webhook-id"], r.body) == r.body
            assert r.verified
        duplicates = sum(n - 1 for n in received.values())
        print(f"\n{kills} SIGKILLs during a 500-event burst: 0 lost, {duplicates} duplicates (same webhook-id)")
        assert duplicates <= kills * 2  # at most the in-flight request(s) per kill are resent
