"""The daemon as a service: sd_notify, reloads, health, metrics, stop under load, secrets."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from notifier.simulator import BlandSimulator, wire_call
from tests.conftest import DaemonProcess, announce_to, cli_env, run_cli, wait_for, write_config
from tests.receivers import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address if not address.startswith("@") else "\0" + address[1:])
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, needle: str, after: int = 0, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index in range(after, len(self.messages)):
                if needle in self.messages[index]:
                    return index
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass
        raise AssertionError(f"{needle!r} not received; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def test_sd_notify_lifecycle_with_watchdog_and_reload(tmp_path: Path, sim: BlandSimulator) -> None:
    write_config(tmp_path, sim)
    address = f"@bland-notifier-test-{os.getpid()}-{time.monotonic_ns()}"  # abstract namespace
    notify = NotifySocket(address)
    sim.set_calls([wire_call("a"), wire_call("b", "IN_PROGRESS")])
    daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path, NOTIFY_SOCKET=address, WATCHDOG_USEC="400000"))
    try:
        ready = notify.wait_for("READY=1")
        assert "STATUS=leader; 2 active calls" in notify.messages[ready]
        assert "0 deliveries queued" in notify.messages[ready]
        first_dog = notify.wait_for("WATCHDOG=1", ready)
        notify.wait_for("WATCHDOG=1", first_dog + 1)
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", ready + 1)
        assert "MONOTONIC_USEC=" in notify.messages[reloading]
        notify.wait_for("READY=1", reloading + 1)
        daemon.proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert daemon.proc.wait(15) == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
        notify.close()


def rules_for(url_a: str, url_b: str, target: str) -> str:
    return f"""
        [detect]
        announce_existing = true
        [targets.a]
        url = "{url_a}"
        [targets.b]
        url = "{url_b}"
        [[rules]]
        name = "appeared"
        events = ["call.appeared"]
        targets = ["{target}"]
        """


def test_reload_swaps_routing_and_a_bad_reload_keeps_the_old_config(tmp_path: Path, sim: BlandSimulator) -> None:
    with Receiver() as a, Receiver() as b:
        config = write_config(tmp_path, sim, rules_for(a.url, b.url, "a"))
        sim.set_calls([wire_call("first")])
        daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path))
        try:
            wait_for(lambda: len(a.received) == 1)
            write_config(tmp_path, sim, rules_for(a.url, b.url, "b"))
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reloaded" in daemon.log)
            assert "reloaded rules_changed='appeared'\n" in daemon.log  # what changed, by name
            sim.set_calls([wire_call("first"), wire_call("second")])
            wait_for(lambda: len(b.received) == 1)
            assert b.received[0].json["data"]["call"]["call_id"] == "second"

            config.write_text(config.read_text().replace('targets = ["b"]', 'targets = ["nope"]'))
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload failed" in daemon.log)
            assert "rules[0].targets[0]" in daemon.log and "unknown target" in daemon.log
            sim.set_calls([wire_call("first"), wire_call("second"), wire_call("third")])
            wait_for(lambda: len(b.received) == 2)  # still routed by the last good config

            write_config(tmp_path, sim, rules_for(a.url, b.url, "b"))
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reloaded; nothing changed" in daemon.log)
            config.write_text(config.read_text().replace('url = "sqlite:///notifier.db"', 'url = "sqlite:///other.db"'))
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "needs a restart" in daemon.log)
            assert daemon.stop() == 0
        finally:
            if daemon.proc.poll() is None:
                daemon.kill()
    assert len(a.received) == 1


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError:
        return 0, b""  # not listening yet


def test_healthz_flips_during_an_outage_and_metrics_count(tmp_path: Path, sim: BlandSimulator) -> None:
    port = free_port()
    with Receiver() as rx:
        write_config(tmp_path, sim, f'[http]\nlisten = "127.0.0.1:{port}"\n' + announce_to(rx.url, events='"*"'))
        sim.set_calls([wire_call("a"), wire_call("b", "IN_PROGRESS")])
        daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path))
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(
                lambda: get(base + "/healthz")[0] == 200 and json.loads(get(base + "/healthz")[1])["status"] == "ok"
            )
            wait_for(lambda: len(rx.received) == 3)
            sim.configure(outage=(time.time(), time.time() + 3600))
            status, body = wait_for(lambda: (r := get(base + "/healthz"))[0] == 503 and r)
            info = json.loads(body)
            assert info["status"] == "unreachable" and info["role"] == "leader"
            assert info["sources"]["default"]["status"] == "unreachable"
            assert "503" in info["sources"]["default"]["last_error"]
            wait_for(lambda: "source.unreachable" in daemon.log)  # the event follows at the next failed poll
            sim.configure(outage=(0.0, 0.0))
            wait_for(lambda: get(base + "/healthz")[0] == 200, timeout=30)

            status, text = get(base + "/metrics")
            assert status == 200
            families = {f.name: f for f in text_string_to_metric_families(text.decode())}
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
            src = ("source", "default")
            assert samples[("notifier_polls_total", (("result", "failed"), src))] >= 1
            assert samples[("notifier_polls_total", (("result", "ok"), src))] >= 2
            assert samples[("notifier_events_total", (("type", "call.appeared"),))] == 2
            assert samples[("notifier_events_total", (("type", "source.unreachable"),))] == 1
            assert samples[("notifier_events_total", (("type", "source.recovered"),))] == 1
            assert samples[("notifier_deliveries_total", (("result", "sent"), ("target", "crm")))] >= 3
            assert samples[("notifier_active_calls", (src, ("status", "IN_PROGRESS")))] == 1
            assert samples[("notifier_active_calls", (src, ("status", "QUEUED")))] == 1
            assert samples[("notifier_source_up", (src,))] == 1
            assert samples[("notifier_leader", ())] == 1
            assert samples[("notifier_leader_changes_total", ())] == 1
            assert ("notifier_delivery_queue_depth", ()) in samples
            assert ("notifier_oldest_pending_delivery_seconds", ()) in samples
            assert samples[("notifier_poll_duration_seconds_count", (src,))] >= 3
            assert abs(samples[("notifier_last_successful_poll_timestamp_seconds", (src,))] - time.time()) < 60
            assert daemon.stop() == 0
        finally:
            if daemon.proc.poll() is None:
                daemon.kill()


def test_sigterm_during_a_delivery_burst_stops_in_bounded_time_and_loses_nothing(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    with Receiver() as rx:
        rx.respond(200, hang=0.05)
        write_config(tmp_path, sim, announce_to(rx.url))
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call(f"c{i}") for i in range(300)])
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: len(rx.received) >= 20)
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        stop_time = time.monotonic() - started
        print(f"\nstop under load took {stop_time:.2f}s")
        assert stop_time < 12  # DRAIN_TIMEOUT bounds it
        assert len(rx.received) < 300
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: len({r.headers["webhook-id"] for r in rx.received}) == 300, timeout=60)
        assert daemon.stop() == 0


def test_secrets_never_printed(tmp_path: Path, sim: BlandSimulator) -> None:
    api_key = "sk-planted-API-KEY-4242"
    url_token = "tok-planted-URL-7777"
    smtp_password = "pw-planted-SMTP-9999"
    with Receiver() as rx:
        rx.respond(500)
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "crm_secret").write_text(SECRET)
        write_config(
            tmp_path,
            sim,
            f"""
            [detect]
            announce_existing = true
            [targets.crm]
            url = "{rx.url}?token={url_token}"
            secret = "${{credential:crm_secret}}"
            retry_initial = "100ms"
            [targets.mail]
            url = "mailto://ops:{smtp_password}@127.0.0.1:1?from=a@example.com&to=b@example.com"
            retry_initial = "100ms"
            [[rules]]
            name = "all"
            events = ["*"]
            targets = ["crm", "mail"]
            """,
        )
        env = cli_env(sim, tmp_path, CREDENTIALS_DIRECTORY=str(creds))
        env["TEST_BLAND_KEY"] = api_key  # wrong key: every poll is an auth failure
        sim.set_calls([wire_call("a")])
        daemon = DaemonProcess(tmp_path, env, ["--log-level", "debug", "run"])
        wait_for(lambda: "credentials" in daemon.log)
        env["TEST_BLAND_KEY"] = sim.api_key
        assert daemon.stop() == 0
        outputs = [daemon.log]
        daemon = DaemonProcess(tmp_path, env, ["--log-level", "debug", "run"])
        wait_for(lambda: "delivery failed" in daemon.log and "mail" in daemon.log, timeout=30)
        assert daemon.stop() == 0
        outputs.append(daemon.log)
        for args, code in (
            (["check"], 0),
            (["events", "--json"], 0),
            (["deliveries", "--json"], 0),
            (["deliveries"], 0),
            (["test", "crm"], 1),  # the receiver answers 500
            (["test", "mail"], 1),
            (["--log-level", "debug", "once"], 0),
        ):
            result = run_cli(args, env, tmp_path)
            assert result.returncode == code, (args, result.stderr)
            outputs += [result.stdout, result.stderr]
        assert "HTTP 500" in "".join(outputs)  # the failures were reported...
        dump = "\n".join(sqlite3.connect(tmp_path / "notifier.db").iterdump())
        for secret in (api_key, url_token, smtp_password, SECRET, SECRET.removeprefix("whsec_")):
            for text in outputs + [dump]:
                assert secret not in text  # ...without a single secret


def test_a_busy_listen_address_is_a_clear_error(tmp_path: Path, sim: BlandSimulator) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_config(tmp_path, sim, f'[http]\nlisten = "127.0.0.1:{port}"\n')
        result = run_cli(["run"], cli_env(sim, tmp_path), tmp_path)
    assert result.returncode == 78  # configuration: systemd's RestartPreventExitStatus=78 applies
    assert (
        result.stderr.strip()
        == f"notifier: config error: http.listen: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_reload_with_new_credentials_builds_a_new_client(tmp_path: Path, sim: BlandSimulator) -> None:
    config = write_config(tmp_path, sim)
    config.write_text(config.read_text().replace('api_key = "${TEST_BLAND_KEY}"', 'api_key = "wrong-key-1"'))
    sim.set_calls([wire_call("a")])
    daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path))
    try:
        wait_for(lambda: "credentials" in daemon.log)
        config.write_text(config.read_text().replace('api_key = "wrong-key-1"', 'api_key = "${TEST_BLAND_KEY}"'))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in daemon.log)
        count = len(sim.requests)
        wait_for(lambda: len(sim.requests) > count + 2)
        assert all(headers["authorization"] == sim.api_key for _, headers in sim.requests[count + 1 :])
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
