"""Faults that used to crash, stall or mislead the daemon (issue 12), each on real parts."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from notifier.bland import MAX_LIVE_REQUESTS, BlandClient, PollError, decode_active_calls
from notifier.channels import Outcome
from notifier.config import load_config
from notifier.detect import DetectSettings, detect
from notifier.outbox import Dispatcher, next_step
from notifier.route import PlannedDelivery
from notifier.secret import Secret
from notifier.simulator import BlandSimulator, wire_call
from notifier.store import AttemptRecord, Delivery, PollRecord, Store
from tests.conftest import DaemonProcess, announce_to, cli_env, crm_config, run_cli, wait_for, write_config
from tests.receivers import Receiver
from tests.test_detect import T0, call, snap

KEY = "sk-live-0123456789abcdef"


class Upstream:
    """A loopback 'Bland' whose every answer the test sets: status, body, headers."""

    def __init__(self) -> None:
        self.answer: tuple[int, bytes, dict[str, str]] = (200, b'{"data": [], "errors": null}', {})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # without content-length the body ends at close

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                status, payload, headers = outer.answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def fetch(client: BlandClient) -> Any:
    async def go() -> Any:
        answer, _ = await client.fetch_active(lambda answer: None)
        await client.aclose()
        return answer

    return anyio.run(go)


def entries(*items: object) -> bytes:
    return json.dumps({"data": list(items), "errors": None}).encode()


# -- untrusted answers ------------------------------------------------------------------


def test_entries_without_a_status_are_malformed_and_skipped() -> None:
    snapshot = decode_active_calls(
        entries(wire_call("ok"), {"call_id": "no-status"}, {"call_id": "null", "status": None}, {"status": "QUEUED"})
    )
    assert list(snapshot.calls) == ["ok"] and snapshot.skipped == 3 and snapshot.duplicates == 0


def test_a_duplicated_call_id_keeps_the_same_entry_whatever_the_order() -> None:
    queued, started = wire_call("d", "QUEUED"), wire_call("d", "IN_PROGRESS")
    one = decode_active_calls(entries(queued, started, wire_call("x")))
    two = decode_active_calls(entries(started, wire_call("x"), queued))
    assert one.calls["d"] == two.calls["d"] and one.calls["d"].status == "IN_PROGRESS"
    assert (one.skipped, one.duplicates) == (1, 1)
    # Two QUEUED entries that differ: still one choice for both orders.
    a, b = wire_call("e", to="+1"), wire_call("e", to="+2")
    assert decode_active_calls(entries(a, b)).calls == decode_active_calls(entries(b, a)).calls


def test_an_answer_larger_than_the_cap_fails_the_poll_without_being_read(upstream: Upstream) -> None:
    body = entries(*[wire_call(f"c{i}") for i in range(400)])
    for headers in ({"content-length": str(len(body))}, {}):  # declared, and found while reading
        upstream.answer = (200, body, headers)
        client = BlandClient(upstream.url, Secret(KEY), Secret("org-1"), 5.0, max_bytes=len(body) // 2)
        answer = fetch(client)
        assert isinstance(answer, PollError), headers
        assert answer.reason == "GET /v1/calls/active: the answer is larger than 0 MB (source.max_answer_mb); not read"
    upstream.answer = (200, body, {})
    assert len(fetch(BlandClient(upstream.url, Secret(KEY), Secret("org-1"), 5.0, max_bytes=len(body))).calls) == 400


def test_hanging_requests_are_bounded_per_client(sim: BlandSimulator) -> None:
    client = BlandClient(sim.base_url, Secret(sim.api_key), Secret(sim.org_id), 5.0)
    assert not isinstance(fetch(client), PollError) and client._threads.live == 0  # a finished request frees its slot
    client = BlandClient(sim.base_url, Secret(sim.api_key), Secret(sim.org_id), 5.0)
    client._threads._live = MAX_LIVE_REQUESTS  # as if that many earlier requests still hung
    threads = threading.active_count()
    answer = fetch(client)
    assert isinstance(answer, PollError) and "16 earlier calls still hang; not starting another" in answer.reason
    assert threading.active_count() == threads


def test_a_key_echoed_by_the_upstream_is_never_stored_or_sent(tmp_path: Path, upstream: Upstream) -> None:
    upstream.answer = (
        200,
        json.dumps({"data": None, "errors": [{"message": f"API key {KEY} is over quota"}]}).encode(),
        {},
    )
    with Receiver() as rx:
        path = write_config(
            tmp_path,
            None,
            f'[targets.crm]\nurl = "{rx.url}"\n[[rules]]\nname = "down"\nevents = ["source.*"]\ntargets = ["crm"]\n',
        )
        path.write_text(path.read_text().replace("http://127.0.0.1:9", upstream.url))
        env = cli_env(None, tmp_path, TEST_BLAND_KEY=KEY)
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: rx.received)
        assert daemon.stop() == 0
        store = Store(f"sqlite:///{tmp_path}/notifier.db")
        with store.engine.connect() as conn:
            stored = [row[0] for row in conn.exec_driver_sql("SELECT error FROM polls WHERE error IS NOT NULL")]
        store.close()
        shown = run_cli(["events", "--json"], env, tmp_path).stdout
        assert rx.received[0].json["type"] == "source.unreachable"
        for text in [*stored, shown, rx.received[0].body.decode(), daemon.log]:
            assert KEY not in text
        assert "API key ********** is over quota" in rx.received[0].json["data"]["last_error"]


def test_control_characters_from_bland_are_shown_escaped(tmp_path: Path, sim: BlandSimulator) -> None:
    write_config(tmp_path, sim, "[detect]\nannounce_existing = true\n")
    sim.set_calls([wire_call("a\x1b]0;owned\x07", to="+1\x1b[2J")])
    env = cli_env(sim, tmp_path)
    assert run_cli(["once"], env, tmp_path).returncode == 0
    shown = run_cli(["events"], env, tmp_path).stdout
    assert "\x1b" not in shown and "\x07" not in shown
    assert "a\\x1b]0;owned\\x07" in shown and "+1\\x1b[2J" in shown
    assert "\x1b" in json.loads(run_cli(["events", "--json"], env, tmp_path).stdout)[0]["data"]["call"]["call_id"]


# -- the store ---------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path, sim: BlandSimulator) -> None:
    write_config(tmp_path, sim)
    garbage = os.urandom(4096)
    (tmp_path / "notifier.db").write_bytes(garbage)
    for command in (["run"], ["once"], ["db", "upgrade"], ["events"]):
        result = run_cli(command, cli_env(sim, tmp_path), tmp_path)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.strip().splitlines() == [
            f"notifier: {tmp_path}/notifier.db is not a SQLite database (it was left as it is); "
            "restore it or point storage.url elsewhere"
        ], command
    assert (tmp_path / "notifier.db").read_bytes() == garbage


def test_a_damaged_database_is_said_in_one_line(tmp_path: Path, sim: BlandSimulator) -> None:
    write_config(tmp_path, sim)
    env = cli_env(sim, tmp_path)
    assert run_cli(["db", "upgrade"], env, tmp_path).returncode == 0
    db = tmp_path / "notifier.db"
    data = bytearray(db.read_bytes())
    data[100:4096] = os.urandom(3996)  # the header stays, the schema page is noise
    db.write_bytes(bytes(data))
    result = run_cli(["run"], env, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is damaged" in result.stderr and str(db) in result.stderr and len(result.stderr.splitlines()) == 1
    assert db.read_bytes() == bytes(data)


def test_pruning_keeps_a_dead_delivery_and_its_event_and_redeliver_starts_afresh(store_url: str) -> None:
    store = Store(store_url)
    store.upgrade()
    t = detect(store.load_state(), snap(call("a")), T0, DetectSettings(announce_existing=True))
    store.commit_poll(t, [PlannedDelivery("crm", "all", (t.events[0].id,))], PollRecord(T0, 0.0, True))
    (delivery,) = store.deliveries()
    for attempt in range(3):  # it fails for a day, then gives up, long after the event's retention
        store.record_attempt(delivery, AttemptRecord(T0 + 3600 * 8 * (attempt + 1), "failed", 500, "HTTP 500", 0.1))
    store.record_attempt(delivery, AttemptRecord(T0 + 86400, "dead", 500, "gave up", 0.1))
    while store.prune(before=T0 + 86400 - 1):  # retention 1 s short of a day: the event is old
        pass
    (dead,) = store.deliveries(status="dead")
    assert dead.attempts == 4 and [e.id for e in store.events()] == [t.events[0].id]
    assert store.redeliver(T0 + 86400, event_id=t.events[0].id) == 1
    (again,) = store.deliveries(status="pending")
    assert again.attempts == 0 and again.first_attempt_at is None
    store.close()


def test_deliveries_of_a_removed_target_go_dead_with_the_reason(tmp_path: Path, store_url: str) -> None:
    path = tmp_path / "n.toml"
    path.write_text(f'[source]\napi_key = "k"\norg_id = "o"\n[storage]\nurl = "{store_url}"\n')
    config = load_config(path, {})
    store = Store(store_url)
    store.upgrade()
    t = detect(store.load_state(), snap(call("a")), T0, DetectSettings(announce_existing=True))
    store.commit_poll(t, [PlannedDelivery("gone", "all", (t.events[0].id,))], PollRecord(T0, 0.0, True))
    anyio.run(Dispatcher(store, config).retire_removed_targets)
    (dead,) = store.deliveries()
    assert dead.status == "dead" and dead.last_error == "the target is no longer in the configuration"
    assert store.queue_stats() == (0, None)
    store.close()


def test_retry_after_is_capped_and_the_last_try_is_at_the_give_up_time() -> None:
    config_text = '[targets.t]\nurl = "https://example.invalid/h"\nretry_max = "10m"\ngive_up_after = "1h"\n'
    from tests.test_outbox import make_config  # noqa: F401  (the same target defaults)

    target = load_config_text(config_text).targets["t"]
    fresh = Delivery(1, "e", 1, "t", "r", "pending", 0, T0, T0, None, None, None)
    step = next_step(fresh, target, Outcome(ok=False, error="HTTP 429", retry_after=1e9), T0, 0.0)
    assert step.outcome == "failed" and step.next_attempt_at == T0 + 600  # not 31 years out
    late = Delivery(1, "e", 1, "t", "r", "pending", 5, T0, T0, T0, None, None)
    step = next_step(late, target, Outcome(ok=False, error="HTTP 503"), T0 + 3500, 0.0)
    assert step.next_attempt_at == T0 + 3600  # not a 10-minute backoff past the window
    assert next_step(late, target, Outcome(ok=False, error="HTTP 503"), T0 + 3600, 0.0).outcome == "dead"


def load_config_text(targets: str) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "n.toml"
        path.write_text('[source]\napi_key = "k"\norg_id = "o"\n' + targets)
        return load_config(path, {})


class FlakyRecords(Store):
    """A real store whose next ``fail`` attempt records are refused, as a locked or full
    database refuses them."""

    fail = 2

    def record_attempt(self, delivery: Delivery, attempt: AttemptRecord) -> None:
        if self.fail:
            self.fail -= 1
            from sqlalchemy.exc import OperationalError

            raise OperationalError("INSERT INTO attempts", {}, Exception("database is locked"))
        super().record_attempt(delivery, attempt)


def test_a_send_whose_record_fails_is_recorded_later_not_sent_again(tmp_path: Path) -> None:
    with Receiver() as rx:
        config = crm_config(tmp_path, f"sqlite:///{tmp_path}/n.db", rx.url)
        store = FlakyRecords(config.storage.url)
        store.upgrade()
        t = detect(store.load_state(), snap(call("a")), time.time(), DetectSettings(announce_existing=True))
        store.commit_poll(t, [PlannedDelivery("crm", "all", (t.events[0].id,))], PollRecord(time.time(), 0.0, True))
        assert anyio.run(Dispatcher(store, config).pass_once) == 1
        assert anyio.run(Dispatcher(store, config).pass_once) == 0  # recorded: nothing left to send
        assert len(rx.received) == 1 and store.fail == 0
        assert store.deliveries()[0].status == "sent"
        store.close()


# -- the listener --------------------------------------------------------------------------


def test_the_listener_answers_405_to_other_methods(tmp_path: Path, sim: BlandSimulator) -> None:
    from tests.test_service import free_port

    port = free_port()
    write_config(tmp_path, sim, f'[http]\nlisten = "127.0.0.1:{port}"\n')
    daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path))
    import urllib.error
    import urllib.request

    def status(method: str) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/healthz", method=method)) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except urllib.error.URLError:
            return 0

    wait_for(lambda: status("GET") == 200)
    assert status("HEAD") == 200
    assert [status(m) for m in ("POST", "PUT", "DELETE")] == [405, 405, 405]
    assert daemon.stop() == 0


def test_full_disk_turns_health_503_and_the_daemon_rides_it_out(tmp_path: Path, sim: BlandSimulator) -> None:
    """The store on a 3 MB tmpfs, filled up: polls cannot be recorded, background store
    work fails; the daemon stays up, says so, and loses nothing once there is room."""
    from tests.test_service import free_port, get

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    rx = Receiver().__enter__()
    try:
        port = free_port()
        write_config(
            tmp_path,
            sim,
            f'[http]\nlisten = "127.0.0.1:{port}"\n' + announce_to(rx.url, events='"source.*"'),
            storage=f'url = "sqlite:///{disk}/notifier.db"',
        )
        sim.set_calls([wire_call("a")])
        daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path))
        wait_for(lambda: json.loads(get(f"http://127.0.0.1:{port}/healthz")[1] or b"{}").get("status") == "ok")
        filler = disk / "filler"
        with filler.open("wb") as f:  # fill the disk to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        sim.set_calls([wire_call("a"), *[wire_call(f"n{i}", objective="x" * 2000) for i in range(300)]])
        code, body = wait_for(lambda: (r := get(f"http://127.0.0.1:{port}/healthz"))[0] == 503 and r, timeout=30)
        health = json.loads(body)
        assert health["status"] == "store unavailable" and "full" in health["store"], health
        metrics = get(f"http://127.0.0.1:{port}/metrics")[1].decode()
        errors = next(line for line in metrics.splitlines() if line.startswith("notifier_store_errors_total "))
        assert float(errors.split()[1]) >= 1
        time.sleep(11)  # a WAL checkpoint (every 10 s) fails too, and must not kill the process
        assert daemon.proc.poll() is None
        # Blind for longer than unreachable_after (1 s): the targets are told, straight, not via the outbox.
        (alert,) = [r.json for r in rx.received]
        assert alert["type"] == "source.unreachable" and alert["data"]["source"] == "default"
        assert alert["data"]["last_error"].startswith("the store cannot record polls: database or disk is full")
        filler.unlink()
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=30)
        wait_for(lambda: [r.json["type"] for r in rx.received] == ["source.unreachable", "source.recovered"])
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log and "could not record the poll" in daemon.log
        store = Store(f"sqlite:///{disk}/notifier.db", create=False)
        appeared = {e.call_id for e in store.events() if e.type == "call.appeared"}
        store.close()
        assert appeared == {"a", *(f"n{i}" for i in range(300))}
    finally:
        rx.__exit__(None, None, None)
        subprocess.run(["umount", "-l", str(disk)], check=False)


# -- templates -----------------------------------------------------------------------------


def test_check_renders_templates_with_unknown_values_null(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text(
        '[source]\napi_key = "k"\norg_id = "o"\n[targets.t]\nurl = "https://example.invalid/h"\n'
        '[[rules]]\nname = "started"\nevents = ["call.started"]\ntargets = ["t"]\n'
        'body = "Queued for {{ event.queued_for_seconds | round | int }}s"\n'
    )
    from notifier.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.key == "rules[0].body"
    assert caught.value.reason.startswith("for call.started with its unknown values null: TypeError")
    # The same template on a type whose value is never null passes.
    path.write_text(path.read_text().replace("call.started", "call.stuck_queued"))
    load_config(path, {})


def test_a_template_that_fails_at_send_time_falls_back_to_the_default_once() -> None:
    from notifier.route import compile_rule
    from notifier.templates import render, sample_event

    rule = compile_rule(
        name="odd", events=["call.started"], match=[], targets=["t"], body="{{ event.queued_for_seconds + 1 }}"
    )
    title, body = render(rule, sample_event("call.started", nulls=True))
    assert title == render(None, sample_event("call.started", nulls=True))[0]  # the default title
    assert body.endswith(
        "(the template of rule odd failed on this event: TypeError: unsupported operand type(s) for +: "
        "'NoneType' and 'int'; this is the default template)"
    )
    assert render(rule, sample_event("call.started"))[1] == "43.0"  # where it works, it is used


# -- Apprise targets -----------------------------------------------------------------------


def test_a_trickling_apprise_endpoint_is_cut_off_and_never_starves_another(tmp_path: Path, sim: BlandSimulator) -> None:
    with Receiver() as slow, Receiver() as healthy:
        slow.respond(trickle=120.0)  # headers, then a byte every 50 ms for two minutes

        def apprise_url(rx: Receiver) -> str:
            return rx.url.replace("http://", "json://")

        write_config(
            tmp_path,
            sim,
            "[detect]\nannounce_existing = true\n"
            f'[targets.slow]\nurl = "{apprise_url(slow)}"\ntimeout = "1s"\nmin_interval = "0s"\n'
            f'[targets.healthy]\nurl = "{apprise_url(healthy)}"\ntimeout = "1s"\nmin_interval = "0s"\n'
            '[[rules]]\nname = "all"\nevents = ["call.appeared"]\ntargets = ["slow", "healthy"]\ndigest_after = 0\n',
        )
        sim.set_calls([wire_call(f"c{i}") for i in range(6)])
        daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path))
        wait_for(lambda: len(healthy.received) == 6, timeout=20)
        wait_for(lambda: "no answer within 3s" in daemon.log, timeout=20)
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 15  # abandoned sends do not hold up the exit
    store = Store(f"sqlite:///{tmp_path}/notifier.db", create=False)
    slow_rows = [d for d in store.deliveries() if d.target == "slow"]
    store.close()
    assert slow_rows and all(d.status == "pending" and d.last_error for d in slow_rows if d.attempts)


def test_a_flood_of_idle_connections_costs_a_bounded_number_of_threads(tmp_path: Path, sim: BlandSimulator) -> None:
    import socket

    from notifier.listener import IDLE_TIMEOUT, MAX_CONNECTIONS
    from tests.test_service import free_port, get

    port = free_port()
    write_config(tmp_path, sim, f'[http]\nlisten = "127.0.0.1:{port}"\n')
    daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path))

    def threads() -> int:
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))

    wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200)
    before, requests = threads(), len(sim.requests)
    flood = []
    for _ in range(200):  # each sends half a request line and then nothing
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /heal")
        flood.append(sock)
    time.sleep(1.0)
    assert threads() <= before + MAX_CONNECTIONS + 4  # (+ a request or store thread that comes and goes)
    wait_for(lambda: len(sim.requests) > requests + 5)  # polling goes on meanwhile
    time.sleep(IDLE_TIMEOUT + 1)  # the idle ones are dropped; the listener answers again
    wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=10)
    for sock in flood:
        sock.close()
    assert daemon.stop() == 0 and "Traceback" not in daemon.log


def test_a_wall_clock_set_back_does_not_hold_retries(store_url: str) -> None:
    store = Store(store_url)
    store.upgrade()
    t = detect(store.load_state(), snap(call("a"), call("b")), T0, DetectSettings(announce_existing=True))
    store.commit_poll(t, [PlannedDelivery("crm", "all", (e.id,)) for e in t.events], PollRecord(T0, 0.0, True))
    first, second = store.deliveries()
    # Retries were scheduled 5 min out; then the clock went back an hour.
    store.record_attempt(first, AttemptRecord(T0, "failed", 500, "HTTP 500", 0.1, next_attempt_at=T0 + 300))
    store.record_attempt(second, AttemptRecord(T0, "failed", 500, "HTTP 500", 0.1, next_attempt_at=T0 + 300))
    back = T0 - 3600
    assert [d.id for d, _ in store.due_deliveries("crm", back, horizon=600)] == [first.id, second.id]
    assert store.due_deliveries("crm", T0 + 1, horizon=600) == []  # in step: a 5-minute backoff is kept
    store.close()


def test_the_org_id_echoed_is_masked_too(upstream: Upstream) -> None:
    org = "org-7f3a9c1d2b4e"
    upstream.answer = (401, json.dumps({"message": f"org {org} has no access"}).encode(), {})
    answer = fetch(BlandClient(upstream.url, Secret(KEY), Secret(org), 5.0))
    assert isinstance(answer, PollError) and org not in answer.reason
    upstream.answer = (200, json.dumps({"data": None, "errors": [f"bad org {org}"]}).encode(), {})
    answer = fetch(BlandClient(upstream.url, Secret(KEY), Secret(org), 5.0))
    assert isinstance(answer, PollError) and org not in answer.reason and "bad org *" in answer.reason


def test_skipped_entries_are_counted_per_source_and_said(tmp_path: Path, upstream: Upstream) -> None:
    from tests.test_service import free_port, get

    upstream.answer = (200, entries(wire_call("ok"), {"call_id": "no-status"}, wire_call("ok")), {})
    port = free_port()
    path = write_config(tmp_path, None, f'[http]\nlisten = "127.0.0.1:{port}"\n')
    path.write_text(path.read_text().replace("http://127.0.0.1:9", upstream.url))
    daemon = DaemonProcess(tmp_path, cli_env(None, tmp_path))

    def skipped() -> float:
        text = get(f"http://127.0.0.1:{port}/metrics")[1].decode()
        line = next(
            (ln for ln in text.splitlines() if ln.startswith('notifier_skipped_entries_total{source="default"}')), ""
        )
        return float(line.split()[1]) if line else 0.0

    wait_for(lambda: skipped() >= 4)  # two a poll: the entry without a status and the duplicate
    assert skipped() % 2 == 0
    assert daemon.stop() == 0
    assert "skipped entries of the answer source=default malformed=1 duplicate_call_ids=1" in daemon.log
