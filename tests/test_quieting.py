"""Quieting end to end: silences made with the CLI while the daemon runs, time-based
muting that drops or defers (across a restart), and the dry runs route-test and replay."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from notifier.simulator import BlandSimulator, wire_call
from tests.conftest import DaemonProcess, cli_env, run_cli, wait_for, write_config
from tests.receivers import Receiver
from tests.test_service import free_port


def two_targets(a: str, b: str, extra: str = "") -> str:
    """Every appeared call to two webhooks, ``a`` and ``b``, through one rule each."""
    return f"""
[detect]
announce_existing = true
[targets.a]
url = "{a}"
[targets.b]
url = "{b}"
[[rules]]
name = "to a"
events = ["call.appeared"]
targets = ["a"]
{extra}
[[rules]]
name = "to b"
events = ["call.appeared"]
targets = ["b"]
"""


def deliveries(env: dict[str, str], directory: Path, *args: str) -> list[dict]:
    """``notifier deliveries --json`` (nothing before the daemon made the store)."""
    result = run_cli(["deliveries", "--json", *args], env, directory)
    return json.loads(result.stdout) if result.returncode == 0 else []


def called(rx: Receiver) -> list[str]:
    return [r.json["data"]["call"]["call_id"] for r in rx.received]


def test_a_silence_made_while_the_daemon_runs_quiets_what_matches_and_only_that(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    port = free_port()
    with Receiver() as a, Receiver() as b:
        write_config(tmp_path, sim, two_targets(a.url, b.url) + f'[http]\nlisten = "127.0.0.1:{port}"\n')
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("first")])
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: called(a) == ["first"] and called(b) == ["first"])

        added = run_cli(
            ["silence", "add", 'target = "a"', 'to =~ "\\+44.*"', "--for", "1h", "--comment", "carrier outage"],
            env,
            tmp_path,
        )
        assert added.returncode == 0, added.stderr
        silence_id = added.stdout.strip()
        assert silence_id.startswith("sil_") and "\n" not in silence_id
        assert 'silences target = "a" and to =~ "\\\\+44.*" until ' in added.stderr

        sim.set_calls([wire_call("first"), wire_call("uk", to="+442071234567"), wire_call("us", to="+13105550100")])
        wait_for(lambda: len(b.received) == 3)  # b is not silenced: all three
        wait_for(lambda: called(a) == ["first", "us"])  # a: the US call, not the UK one
        rows = deliveries(env, tmp_path, "--status", "silenced")
        assert [(r["target"], r["rule"], r["quieted_by"]) for r in rows] == [("a", "to a", silence_id)]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'notifier_deliveries_total{result="silenced",target="a"} 1.0' in metrics

        listed = json.loads(run_cli(["silence", "list", "--json"], env, tmp_path).stdout)
        assert [(s["id"], s["state"], s["comment"], s["matchers"]) for s in listed] == [
            (silence_id, "active", "carrier outage", ['target = "a"', 'to =~ "\\\\+44.*"'])
        ]
        text = run_cli(["silence", "list"], env, tmp_path).stdout
        assert f"{silence_id}  active " in text and "(20" in text and "Z); by " in text  # local time and UTC

        assert run_cli(["silence", "expire", silence_id], env, tmp_path).stdout == f"expired {silence_id}\n"
        assert run_cli(["silence", "expire", silence_id], env, tmp_path).returncode == 1
        assert run_cli(["silence", "list"], env, tmp_path).stdout.startswith("no active or pending silences")
        expired = json.loads(run_cli(["silence", "list", "--all", "--json"], env, tmp_path).stdout)
        assert [s["state"] for s in expired] == ["expired"]  # kept, for retention

        sim.set_calls([wire_call("first"), wire_call("uk2", to="+442079460000")])
        wait_for(lambda: called(a)[-1:] == ["uk2"])  # expired: let through again
        assert daemon.stop() == 0


def test_a_silence_covers_what_is_already_queued_for_a_failing_target(tmp_path: Path, sim: BlandSimulator) -> None:
    with Receiver() as a, Receiver() as b:
        a.respond(500)  # a is down: its delivery waits in backoff
        write_config(
            tmp_path, sim, two_targets(a.url, b.url).replace("[targets.b]", 'retry_initial = "1s"\n[targets.b]', 1)
        )
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("queued")])
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: len(a.received) == 1 and len(b.received) == 1)
        assert (
            run_cli(
                ["silence", "add", 'target = "a"', "--for", "10m", "--comment", "a is down"], env, tmp_path
            ).returncode
            == 0
        )
        a.respond(200)
        wait_for(lambda: deliveries(env, tmp_path, "--status", "silenced"))
        assert len(a.received) == 1  # the retry was not sent
        assert daemon.stop() == 0


def _minute_window() -> tuple[str, float]:
    """A UTC window from this minute to the next (at least 12 s left) and its end."""
    now = time.time()
    if 60 - now % 60 < 12:
        time.sleep(60 - now % 60 + 0.1)
        now = time.time()
    start = datetime.fromtimestamp(now // 60 * 60, UTC)
    end = start.timestamp() + 60
    stop = datetime.fromtimestamp(end, UTC)
    stop_text = "24:00" if stop.hour == 0 and stop.minute == 0 else f"{stop:%H:%M}"
    return f'[[time_intervals.now]]\ntimes = [{{ start = "{start:%H:%M}", end = "{stop_text}" }}]\n', end


def test_muting_drops_or_defers_and_a_deferred_delivery_arrives_once_when_the_mute_ends_across_a_restart(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    window, ends = _minute_window()
    with Receiver() as a, Receiver() as b, Receiver() as c:
        body = two_targets(a.url, b.url, 'mute_time_intervals = ["now"]\nwhen_muted = "defer"')
        body = body.replace('targets = ["b"]', 'targets = ["b"]\nmute_time_intervals = ["now"]')  # b: drop
        body += (  # c, an Apprise target: what a mute held is released as one digest
            f'[targets.c]\nurl = "{c.url.replace("http://", "json://")}"\n'
            '[[rules]]\nname = "to c"\nevents = ["call.appeared"]\ntargets = ["c"]\ndigest_after = 1\n'
            'mute_time_intervals = ["now"]\nwhen_muted = "defer"\n'
        )
        write_config(tmp_path, sim, window + body)
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("night"), wire_call("owl")])
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: len(deliveries(env, tmp_path)) == 6)
        rows = deliveries(env, tmp_path)
        assert {(r["target"], r["status"], r["quieted_by"]) for r in rows} == {
            ("a", "pending", "now"),
            ("b", "muted", "now"),
            ("c", "pending", "now"),
        }
        end = datetime.fromtimestamp(ends, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert {r["next_attempt_at"] for r in rows if r["status"] == "pending"} == {end}
        assert daemon.stop() == 0  # a restart in the middle of the mute
        assert not a.received and not b.received and not c.received
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: len(a.received) == 2 and len(c.received) == 1, timeout=ends - time.time() + 20)
        assert time.time() >= ends  # nothing early
        assert sorted(called(a)) == ["night", "owl"]  # a webhook: one request per event
        digest = c.received[0].json
        assert digest["title"] == "to c: 2 call.appeared", digest
        time.sleep(1.0)  # a few more polls and passes: still once, and b never
        assert len(a.received) == 2 and len(c.received) == 1 and not b.received
        assert [
            r["event_count"] if "event_count" in r else r["events"]
            for r in deliveries(env, tmp_path, "--status", "sent")
            if r["target"] == "c"
        ] == [2]
        assert daemon.stop() == 0


def test_route_test_says_per_target_what_would_happen_and_shows_the_message(tmp_path: Path) -> None:
    config = """
[targets.console]
url = "console://"
[targets.crm]
url = "http://127.0.0.1:9/hook"
[targets.spare]
url = "http://127.0.0.1:9/spare"
[[time_intervals.weekend]]
weekdays = ["saturday", "sunday"]
[[rules]]
name = "uk stuck"
events = ["call.stuck_queued"]
match = ['to =~ "\\\\+44.*"']
targets = ["console"]
title = "Stuck: {{ call.to }}"
mute_time_intervals = ["weekend"]
[[rules]]
name = "crm"
events = ["*"]
targets = ["crm"]
"""
    path = write_config(tmp_path, None, config)
    env = cli_env(None, tmp_path)
    weekday = run_cli(
        ["route-test", "call.stuck_queued", "to=+442071234567", "--at", "2026-12-02T10:00:00Z"], env, tmp_path
    )
    assert weekday.returncode == 0, weekday.stderr
    lines = weekday.stdout.splitlines()
    assert lines[0].startswith("call.stuck_queued with to=+442071234567 at ")
    assert any(line.split() == ["console", "uk", "stuck", "send"] for line in lines)
    assert any(line.split() == ["crm", "crm", "send"] for line in lines)
    assert any(line.split() == ["spare", "-", "no", "rule"] for line in lines)
    assert "  Stuck: +442071234567\n" in weekday.stdout and '"to":"+442071234567"' in weekday.stdout
    saturday = run_cli(
        ["route-test", "call.stuck_queued", "to=+442071234567", "--at", "2026-12-05T10:00:00+00:00", "--json"],
        env,
        tmp_path,
    )
    report = json.loads(saturday.stdout)
    by_target = {row["target"]: row for row in report["targets"]}
    assert by_target["console"]["outcome"] == "muted" and by_target["console"]["by"] == "weekend"
    assert by_target["console"]["until"] == "2026-12-07T00:00:00.000Z"
    assert by_target["spare"] == {"target": "spare", "rule": None, "outcome": "no rule"}
    assert report["event"]["data"]["call"]["to"] == "+442071234567"
    us = run_cli(["route-test", "call.stuck_queued", "to=+13105550100", "--json"], env, tmp_path)
    assert {r["target"]: r["outcome"] for r in json.loads(us.stdout)["targets"]}["console"] == "no rule"
    path.write_text(path.read_text().replace('events = ["*"]', 'events = ["call.appeared"]'))
    none = run_cli(["route-test", "call.stuck_queued", "to=+13105550100"], env, tmp_path)
    assert none.returncode == 1  # no target would send
    bad = run_cli(["route-test", "call.stuck_queued", "tox=1"], env, tmp_path)
    assert bad.returncode == 2 and "expected FIELD=VALUE with FIELD one of" in bad.stderr


def test_replay_compares_what_a_new_config_would_deliver_with_what_was(tmp_path: Path, sim: BlandSimulator) -> None:
    with Receiver() as a, Receiver() as b:
        write_config(tmp_path, sim, two_targets(a.url, b.url))
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("x"), wire_call("y", to="+442071234567")])
        assert run_cli(["once"], env, tmp_path).returncode == 0
        new = write_config(
            tmp_path,
            sim,
            two_targets(a.url, b.url).replace('targets = ["b"]', 'targets = ["b"]\nmatch = [\'to =~ "\\\\+44.*"\']'),
            name="new.toml",
        )
        before = (tmp_path / "notifier.db").read_bytes()
        result = run_cli(["--config", str(new), "replay", "--since", "1h", "--json"], env, tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        rows = {(r["rule"], r["target"]): (r["would"], r["was"]) for r in report["rows"]}
        assert report["events"] == 2
        assert rows[("to a", "a")] == ({"messages": 2, "events": 2}, {"sent": 2})
        assert rows[("to b", "b")] == ({"messages": 1, "events": 1}, {"sent": 2})
        text = run_cli(["--config", str(new), "replay", "--since", "1h"], env, tmp_path).stdout
        assert "2 events since " in text and "(nothing is sent or written)" in text
        assert "1 messages (1 events, 0 digests)" in text and "2 sent" in text
        assert len(a.received) == 2 and len(b.received) == 2  # replay sent nothing
        assert (tmp_path / "notifier.db").read_bytes() == before  # and wrote nothing


def test_a_long_deferral_waits_quietly_and_a_reload_that_ends_the_mute_releases_it(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    year = datetime.now(UTC).year
    mute = f'[[time_intervals.year]]\nyears = ["{year}"]\n'
    with Receiver() as a, Receiver() as b:
        body = two_targets(a.url, b.url, 'mute_time_intervals = ["year"]\nwhen_muted = "defer"')
        config = write_config(tmp_path, sim, mute + body)
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("held")])
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: len(b.received) == 1)
        [held] = [d for d in deliveries(env, tmp_path) if d["target"] == "a"]
        assert held["status"] == "pending" and held["next_attempt_at"] == f"{year + 1}-01-01T00:00:00.000Z"
        time.sleep(2.0)  # far beyond retry_max: still not due, and the worker is not spinning on it
        assert daemon.log.count("delivery batch target=a") <= 1 and not a.received
        config.write_text(config.read_text().replace('mute_time_intervals = ["year"]\nwhen_muted = "defer"', ""))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(a.received) == 1, timeout=10)
        assert "held deliveries are judged again under the new config count=1" in daemon.log
        assert daemon.stop() == 0


def test_the_dry_runs_need_no_credentials_and_bad_arguments_exit_2(tmp_path: Path, sim: BlandSimulator) -> None:
    with Receiver() as a, Receiver() as b:
        write_config(tmp_path, sim, two_targets(a.url, b.url))
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("x")])
        assert run_cli(["once"], env, tmp_path).returncode == 0
    other = write_config(
        tmp_path,
        sim,
        two_targets("http://127.0.0.1:9/a", "http://127.0.0.1:9/b") + '[targets.c]\nurl = "${credential:nope}"\n',
        name="other.toml",
    )
    replay = run_cli(["replay", "--since", "1h", "--config", str(other), "--json"], env, tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["config"] == str(other) and json.loads(replay.stdout)["events"] == 1
    route = run_cli(["--config", str(other), "route-test", "call.appeared"], env, tmp_path)
    assert route.returncode == 0, route.stderr
    for args, message in (
        (["route-test", "call.started", "was_stuck=maybe"], "was_stuck is true or false"),
        (["route-test", "call.stuck_queued", "queued_for_seconds=inf"], "is a number, 0 or more"),
        (["route-test", "call.appeared", "--at", "9999-12-31T03:00:00Z"], "outside the years 1970 to 9000"),
        (["silence", "add", "rule =~ .*", "--for", "1h", "--comment", "all"], "hold for every delivery"),
        (["silence", "add", 'rule = "x"', "--for", "99999999999d", "--comment", "long"], "within a hundred years"),
        (["silence", "add", 'rule = "x"', "--for", "1h", "--comment", "\x1b"], "--comment: say why"),
    ):
        result = run_cli(args, env, tmp_path)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, (args, result)
