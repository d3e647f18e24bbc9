"""Failover times: daemons sharing a store as processes, the leader lost again and again.

Two ways to lose a leader: SIGKILL (a crash; on the same machine the successor sees
that the holder's pid is gone and takes over without waiting), and SIGSTOP (a host
that vanished, or a process that hangs: the lease must run out first). Each figure
is the time from the loss to the successor's first committed poll, against SPEC's
bounds: ``lease + poll_interval`` after a crash, ``poll_interval + 1 s`` after a clean
stop (SIGTERM).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.server import API_KEY, ORG_ID, BenchServer
from notifier.lease import read_leader
from notifier.store import Store

LEASE = 2.0
INTERVAL = 0.2


def _start(directory: str, config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "STATE_DIRECTORY": directory, "NOTIFIER_LOG_LEVEL": "warning"}
    return subprocess.Popen(
        [sys.executable, "-m", "notifier", "--config", str(config), "run"],
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _leader(store: Store) -> int | None:
    try:
        info = read_leader(store)
    except Exception:  # the first daemon has not made the tables yet
        return None
    return info.pid if info is not None and info.held else None


def _last_poll(store: Store) -> float:
    try:
        with store.engine.connect() as conn:
            return float(conn.exec_driver_sql("SELECT coalesce(max(at), 0) FROM polls WHERE ok").scalar())
    except Exception:
        return 0.0


def _wait(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError("failover did not happen in time")


def bench_failover(url: str | None, rounds: int, how: str) -> dict[str, Any]:
    """``rounds`` losses of the leader (``how``: kill, stop or term) among two daemons."""
    server = BenchServer(1000, steady=True)
    times: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as directory:
            store_url = url or f"sqlite:///{directory}/notifier.db"
            config = Path(directory, "notifier.toml")
            config.write_text(
                f'[source]\nbase_url = "{server.base_url}"\napi_key = "{API_KEY}"\norg_id = "{ORG_ID}"\n'
                f'poll_interval = "{INTERVAL:g}s"\n[storage]\nurl = "{store_url}"\nlease = "{LEASE:g}s"\n'
            )
            daemons = {p.pid: p for p in (_start(directory, config), _start(directory, config))}
            store = None
            try:
                _wait(lambda: Path(directory, "notifier.db").exists() or url)
                time.sleep(0.5)
                store = Store(store_url, create=False)
                for _ in range(rounds):
                    pid = _wait(lambda: (p := _leader(store)) in daemons and p)  # noqa: B023
                    _wait(lambda: _last_poll(store) > time.time() - 1)  # noqa: B023
                    lost = daemons.pop(pid)
                    lost_at = time.time()
                    if how == "term":
                        lost.terminate()
                        lost.wait(30)
                        lost_at = time.time()
                    elif how == "kill":
                        lost.kill()
                        lost.wait(30)  # reaped at once, as systemd does: a zombie's pid still answers
                    else:
                        lost.send_signal(signal.SIGSTOP)
                    _wait(lambda: _leader(store) in daemons)  # noqa: B023
                    _wait(lambda: _last_poll(store) > lost_at)  # noqa: B023
                    times.append(_last_poll(store) - lost_at)
                    if how == "stop":
                        lost.kill()
                    lost.wait(30)
                    fresh = _start(directory, config)
                    daemons[fresh.pid] = fresh
            finally:
                if store is not None:
                    store.close()
                for proc in daemons.values():
                    proc.kill()
                    proc.wait(30)
    finally:
        server.stop()
    bound = LEASE + INTERVAL if how in ("kill", "stop") else INTERVAL + 1.0
    return {
        "how": how,
        "rounds": rounds,
        "median": statistics.median(times),
        "max": max(times),
        "bound": bound,
    }
