"""The daemon as a real process: clean stops, restarts, SIGKILL mid-poll, sd_notify."""

from __future__ import annotations

import random
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from notifier.simulator import BlandSimulator, wire_call
from notifier.store import Store
from tests.conftest import DaemonProcess, cli_env, from_store, wait_for, write_config

ANNOUNCE = "[detect]\nannounce_existing = true\n"


def events(directory: Path) -> list[tuple[str, str | None]]:
    return from_store(directory, lambda store: [(e.type, e.call_id) for e in store.events(limit=None)])


def poll_times(directory: Path) -> list[float]:
    def read(store: Store) -> list[float]:
        with store.engine.connect() as conn:
            return [row[0] for row in conn.exec_driver_sql("SELECT at FROM polls WHERE ok ORDER BY id")]

    return from_store(directory, read)


def test_sigterm_then_restart_continues_where_it_stopped(tmp_path: Path, sim: BlandSimulator) -> None:
    write_config(tmp_path, sim, ANNOUNCE)
    env = cli_env(sim, tmp_path)
    sim.set_calls([wire_call("a"), wire_call("b", "IN_PROGRESS")])
    daemon = DaemonProcess(tmp_path, env)
    wait_for(lambda: len(events(tmp_path)) == 3)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert "stopped" in daemon.log
    # One summary line for the poll's events, none per event (that is debug level).
    assert "detected source=default events=3 call.appeared=2 call.started=1" in daemon.log
    assert "event_id=" not in daemon.log

    # While it is down: a ends, b goes on, c appears.
    sim.set_calls([wire_call("b", "IN_PROGRESS"), wire_call("c")])
    daemon = DaemonProcess(tmp_path, env)
    wait_for(lambda: len(events(tmp_path)) == 5)
    polled = len(poll_times(tmp_path))
    wait_for(lambda: len(poll_times(tmp_path)) >= polled + 5)  # five more polls: nothing may repeat
    assert daemon.stop(signal.SIGINT) == 0
    assert events(tmp_path) == [
        ("call.appeared", "a"),
        ("call.appeared", "b"),
        ("call.started", "b"),
        ("call.appeared", "c"),
        ("call.disappeared", "a"),
    ]


def test_sigkill_mid_poll_loses_and_repeats_nothing(tmp_path: Path, sim: BlandSimulator) -> None:
    write_config(tmp_path, sim, ANNOUNCE)
    env = cli_env(sim, tmp_path)
    sim.configure(latency=0.02)
    rng = random.Random(7)
    live: dict[str, str] = {}
    ever: set[str] = set()
    for round_ in range(8):
        # Change upstream: some calls end, some start, new ones arrive.
        for cid in list(live):
            roll = rng.random()
            if roll < 0.3:
                del live[cid]
            elif roll < 0.6:
                live[cid] = "IN_PROGRESS"
        for i in range(rng.randint(3, 12)):
            cid = f"r{round_}-{i}"
            live[cid] = rng.choice(["QUEUED", "IN_PROGRESS"])
            ever.add(cid)
        sim.set_calls([wire_call(cid, status) for cid, status in live.items()])
        committed = len(poll_times(tmp_path))
        daemon = DaemonProcess(tmp_path, env)
        # What the system promises is about what a committed poll saw: a call that came
        # and went while no poll committed can never be observed. So each round lets
        # one poll of this upstream commit, then kills at a random moment, often mid-poll.
        wait_for(lambda: len(poll_times(tmp_path)) > committed)  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.4))
        daemon.kill()
    daemon = DaemonProcess(tmp_path, env)  # a last run that sees the final upstream
    wait_for(lambda: "started" in daemon.log)
    wait_for(lambda: {cid for t, cid in events(tmp_path) if t == "call.appeared"} == ever, timeout=30)
    polled = len(poll_times(tmp_path))
    wait_for(lambda: len(poll_times(tmp_path)) >= polled + 5)  # five more polls: nothing may repeat
    assert daemon.stop() == 0
    seen = events(tmp_path)
    counts = Counter(seen)
    for cid in ever:
        assert counts[("call.appeared", cid)] == 1, cid
        assert counts[("call.started", cid)] <= 1, cid
        assert counts[("call.disappeared", cid)] == (0 if cid in live else 1), cid
    for cid, status in live.items():
        assert counts[("call.started", cid)] == (1 if status == "IN_PROGRESS" else 0), cid


def test_sd_notify_ready_status_and_stopping(tmp_path: Path, sim: BlandSimulator) -> None:
    write_config(tmp_path, sim)
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(15)
    sim.set_calls([wire_call("a")])
    daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path, NOTIFY_SOCKET=str(sock_path)))
    messages: list[str] = []
    try:
        while not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=leader; 1 active calls" in ready
        daemon.proc.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        assert daemon.proc.wait(10) == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        listener.close()


def test_polls_start_every_interval_however_long_a_poll_takes(tmp_path: Path, sim: BlandSimulator) -> None:
    """A slow API must not stretch the period: with a 400 ms interval and 300 ms answers,
    polls start 400 ms apart, not 700 ms (and a change waits at most one interval)."""
    path = write_config(tmp_path, sim)
    path.write_text(path.read_text().replace('poll_interval = "100ms"', 'poll_interval = "400ms"'))
    sim.set_calls([wire_call("a")])
    sim.configure(latency=0.3)
    daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path))
    wait_for(lambda: len(poll_times(tmp_path)) >= 9, timeout=30)
    assert daemon.stop() == 0
    times = poll_times(tmp_path)
    gaps = sorted(b - a for a, b in zip(times[1:], times[2:], strict=False))  # from the 2nd poll on
    assert 0.3 < gaps[len(gaps) // 2] < 0.62, gaps  # stretched, it would be 0.7


@pytest.mark.parametrize("fault", ["stall", "timeout"])
def test_sigterm_during_a_stalled_answer_stops_at_once(tmp_path: Path, sim: BlandSimulator, fault: str) -> None:
    """Bland sends headers and half a body, then nothing (``stall``), or no answer at all
    (``timeout``), well within the timeout: the request blocked in its thread does not
    hold up the stop."""
    path = write_config(tmp_path, sim, ANNOUNCE)
    path.write_text(path.read_text().replace('timeout = "2s"', 'timeout = "60s"'))
    sim.set_calls([wire_call("a")])
    daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path))
    wait_for(lambda: events(tmp_path))  # up and polling
    requests = len(sim.requests)
    sim.fail_next(fault, delay=30)
    wait_for(lambda: len(sim.requests) > requests)
    time.sleep(0.3)  # the daemon is now blocked reading the body
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
