"""The heartbeat: the leader pings a dead man's switch after poll cycles, at most once
per ``every``, never from a standby, and a failing switch never holds up polling."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from notifier.simulator import BlandSimulator
from tests.conftest import DaemonProcess, cli_env, run_cli, wait_for, write_config
from tests.receivers import Receiver
from tests.test_service import free_port


def heartbeat(url: str, every: str = "500ms") -> str:
    return f'[heartbeat]\nurl = "{url.rsplit("/hooks", 1)[0]}/ping/abc-123"\nevery = "{every}"\ntimeout = "1s"\n'


def test_the_leader_pings_at_the_configured_rate_and_a_standby_not_at_all(tmp_path: Path, sim: BlandSimulator) -> None:
    with Receiver() as first, Receiver() as second:
        write_config(tmp_path, sim, heartbeat(first.url))
        write_config(
            tmp_path, sim, heartbeat(second.url) + f'[http]\nlisten = "127.0.0.1:{free_port()}"\n', name="standby.toml"
        )
        env = cli_env(sim, tmp_path)
        leader = DaemonProcess(tmp_path, env)
        wait_for(lambda: first.received)
        standby = DaemonProcess(tmp_path, env, ["--config", "standby.toml", "run"])
        wait_for(lambda: " notifier: standby leader=" in standby.log)
        started, count = time.monotonic(), len(first.received)
        time.sleep(3.0)
        pings = len(first.received) - count
        elapsed = time.monotonic() - started
        # every 500 ms after a cycle (polls every 100 ms): about 6 in 3 s, never more than 7
        assert 3 <= pings <= elapsed / 0.5 + 1, pings
        assert all(r.path == "/ping/abc-123" and r.body == b"" for r in first.received)
        assert not second.received  # the standby does not poll, so it does not ping
        assert leader.stop() == 0
        wait_for(lambda: second.received, timeout=20)  # the new leader pings its own switch
        assert standby.stop(signal.SIGTERM) == 0


def test_a_failing_or_hanging_switch_is_logged_counted_and_never_delays_a_poll(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    with Receiver() as switch:
        switch.respond(200, hang=30.0)  # each ping hangs far past its 1 s timeout
        port = free_port()
        write_config(tmp_path, sim, heartbeat(switch.url, every="200ms") + f'[http]\nlisten = "127.0.0.1:{port}"\n')
        env = cli_env(sim, tmp_path)
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: "heartbeat timed out" in daemon.log)
        polls_before = _polls(env, tmp_path)
        time.sleep(1.0)
        assert _polls(env, tmp_path) >= polls_before + 5  # 100 ms polls go on meanwhile
        assert len(switch.received) <= 3  # one ping at a time: a hung one is not piled on
        switch.respond(503)
        wait_for(lambda: "heartbeat refused status=503" in daemon.log)
        from urllib.request import urlopen

        metrics = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'notifier_heartbeats_total{result="failed"}' in metrics
        assert "abc-123" not in daemon.log  # the switch's URL holds its key: never logged
        assert daemon.stop() == 0


def _polls(env: dict[str, str], directory: Path) -> int:
    import sqlite3

    with sqlite3.connect(directory / "notifier.db") as conn:
        return int(conn.execute("SELECT count(*) FROM polls").fetchone()[0])


def test_heartbeat_config_is_checked(tmp_path: Path) -> None:
    for url in ("ftp://x", "http://127.0.0.1:abc/key", "http://a..b/"):
        path = write_config(tmp_path, None, f'[heartbeat]\nurl = "{url}"\n')
        result = run_cli(["check", str(path)], cli_env(None, tmp_path), tmp_path)
        assert result.returncode == 78 and "heartbeat.url: must be an http:// or https:// URL" in result.stderr, url
    result = run_cli(["check", str(path)], cli_env(None, tmp_path), tmp_path)
    assert result.returncode == 78 and "heartbeat.url: must be an http:// or https:// URL" in result.stderr
