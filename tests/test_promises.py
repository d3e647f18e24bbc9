"""Promises README makes that no other test pinned down: the drain cap on SIGTERM, the
CLI filters and exit codes, the retention loop, the ``shorten`` filter."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from notifier.simulator import BlandSimulator, wire_call
from notifier.store import Store
from notifier.templates import shorten
from tests.conftest import DaemonProcess, announce_to, cli_env, run_cli, wait_for, write_config
from tests.receivers import Receiver


def test_sigterm_waits_at_most_10s_for_a_send_in_flight_and_it_is_resent_after(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    with Receiver() as rx:
        rx.respond(200, hang=30.0)  # the receiver sits on the request far longer than the drain
        write_config(tmp_path, sim, announce_to(rx.url, extra='timeout = "60s"\n'))
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("a")])
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: rx.received)  # the request has arrived; its answer will take 30 s
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        took = time.monotonic() - started
        assert 9.5 <= took < 14, took  # the 10 s drain, then out
        assert "stopped with deliveries in flight; they are resent at the next start" in daemon.log
        rx.respond(200)
        first_id = rx.received[0].headers["webhook-id"]
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: len(rx.received) >= 2)
        assert daemon.stop() == 0
        assert {r.headers["webhook-id"] for r in rx.received} == {first_id}  # the same event, resent


def test_event_and_delivery_filters_and_redeliver_from_the_command_line(tmp_path: Path, sim: BlandSimulator) -> None:
    with Receiver() as rx:
        rx.respond(410)  # Gone: every delivery is dead at once
        write_config(tmp_path, sim, announce_to(rx.url, events='"call.*"'))
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("a"), wire_call("b", "IN_PROGRESS")])
        assert run_cli(["once"], env, tmp_path).returncode == 0

        def cli(*args: str) -> str:
            result = run_cli(list(args), env, tmp_path)
            assert result.returncode == 0, result.stderr
            return result.stdout

        def ids(*args: str) -> list[str]:
            return [e["type"] + ":" + e["data"]["call"]["call_id"] for e in json.loads(cli("events", "--json", *args))]

        assert ids() == ["call.appeared:a", "call.appeared:b", "call.started:b"]
        assert ids("--type", "call.started") == ["call.started:b"]
        assert ids("--type", "call.*") == ids() and ids("--type", "source.*") == []
        assert ids("--call-id", "a") == ["call.appeared:a"]
        assert ids("--limit", "1") == ["call.started:b"]
        assert ids("--since", "1h") == ids() and ids("--since", "1ms") == []
        dead = json.loads(cli("deliveries", "--status", "dead", "--json"))
        assert len(dead) == 3 and all(d["last_error"] for d in dead)
        newest = json.loads(cli("deliveries", "--limit", "1", "--json"))
        assert [d["id"] for d in newest] == [dead[-1]["id"]]
        assert json.loads(cli("deliveries", "--status", "pending", "--json")) == []

        first = dead[0]["event_id"]
        assert cli("redeliver", "--event", first).strip() == "re-queued 1 dead delivery"
        assert [d["event_id"] for d in json.loads(cli("deliveries", "--status", "pending", "--json"))] == [first]
        assert cli("redeliver", "--all-dead").strip() == "re-queued 2 dead deliveries"
        assert len(json.loads(cli("deliveries", "--status", "pending", "--json"))) == 3
        rx.respond(200)
        assert run_cli(["once"], env, tmp_path).returncode == 0
        assert len(json.loads(cli("deliveries", "--status", "sent", "--json"))) == 3


def test_exit_codes_of_once_and_test(tmp_path: Path, sim: BlandSimulator) -> None:
    with Receiver() as rx:
        write_config(tmp_path, sim, announce_to(rx.url))
        env = cli_env(sim, tmp_path)
        assert run_cli(["once"], env, tmp_path).returncode == 0
        sim.configure(outage=(0.0, 1e12))
        failed = run_cli(["once"], env, tmp_path)
        assert failed.returncode == 1, failed.stderr
        sent = run_cli(["test", "crm"], env, tmp_path)
        assert sent.returncode == 0 and sent.stdout.strip() == "sent a test notification to crm"
        assert rx.received[-1].json["type"] == "notifier.test"
        rx.respond(500)
        refused = run_cli(["test", "crm"], env, tmp_path)
        assert refused.returncode == 1 and "test notification to crm failed: HTTP 500" in refused.stderr
        unknown = run_cli(["test", "nope"], env, tmp_path)
        assert unknown.returncode == 1 and "no target 'nope' (targets: crm)" in unknown.stderr


def test_the_daemon_prunes_what_retention_lets_go(tmp_path: Path, sim: BlandSimulator) -> None:
    write_config(tmp_path, sim, "[detect]\nannounce_existing = true\n")
    env = cli_env(sim, tmp_path)
    sim.set_calls([wire_call("old")])
    assert run_cli(["once"], env, tmp_path).returncode == 0
    time.sleep(2.5)
    path = tmp_path / "notifier.toml"
    path.write_text(
        path.read_text().replace(
            '[storage]\nurl = "sqlite:///notifier.db"', '[storage]\nurl = "sqlite:///notifier.db"\nretention = "2s"'
        )
    )
    sim.set_calls([wire_call("old"), wire_call("new")])
    daemon = DaemonProcess(tmp_path, env)
    store = Store(f"sqlite:///{tmp_path}/notifier.db", create=False)
    try:
        wait_for(lambda: "pruned old records" in daemon.log)  # at start, then every 10 minutes
        assert "old" not in {e.call_id for e in store.events()}
    finally:
        store.close()
    assert daemon.stop() == 0


def test_shorten_filter() -> None:
    assert shorten("a  b\n c") == "a b c"  # whitespace collapsed
    assert shorten("x" * 10, 5) == "xxxx…"
    assert shorten("exactly", 7) == "exactly"
    assert shorten("word word", 6) == "word…"  # no dangling space before the ellipsis
