"""Operational promises of README and SPEC that no other test pinned down: the systemd
watchdog through an upstream hang and on a standby, the cap on abandoned Apprise
sends, templates that fail (or try to escape the sandbox) on real events, targets
removed by a reload, log levels, ``max_answer_mb``, ``notifier simulate``'s flags,
``db copy`` from PostgreSQL to SQLite, ``once`` over several sources, ``status --json``
and the ``/etc`` fallback of the config path. Real processes, sockets and stores."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from notifier.simulator import BlandSimulator, wire_call
from notifier.store import Store
from tests.conftest import PYTHON, DaemonProcess, announce_to, cli_env, from_store, run_cli, wait_for, write_config
from tests.receivers import Receiver
from tests.test_service import NotifySocket, free_port
from tests.test_sources import source

ANNOUNCE = "[detect]\nannounce_existing = true\n"


def apprise_json(rx: Receiver) -> str:
    """An Apprise ``json://`` URL that posts to the receiver."""
    return rx.url.replace("http://", "json://")


def cli_json(args: list[str], env: dict[str, str], cwd: Path, codes: tuple[int, ...] = (0,)) -> Any:
    """A read command's ``--json`` output (``status`` exits 1 without a leader: ``codes``)."""
    result = run_cli([*args, "--json"], env, cwd)
    assert result.returncode in codes, result.stderr
    return json.loads(result.stdout)


# -- 1. the systemd watchdog ------------------------------------------------------------------


def test_watchdog_is_fed_while_bland_hangs_by_a_standby_and_after_recovery(tmp_path: Path, sim: BlandSimulator) -> None:
    """SPEC: WATCHDOG=1 at half of $WATCHDOG_USEC while the poll loop makes progress; an
    upstream outage is progress. Every answer here trickles its headers a byte every
    50 ms (no read timeout ever trips): each poll hangs until its 2 s backstop (timeout
    500 ms), ten watchdog intervals. A standby keeps the watchdog fed too and says who
    leads in STATUS=.

    (That a *hung* loop stops the keep-alives is not tested here: the stall limit is
    ``2 * timeout + 1 + 5 + 30 + 30`` s, at least 66 s whatever the config, and only a
    store call can hang that long; see daemon._stall_limit.)"""
    path = write_config(tmp_path, sim)
    path.write_text(path.read_text().replace('timeout = "2s"', 'timeout = "500ms"'))
    sim.fail_next("trickle_headers", count=1000, delay=30.0)
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    leader_addr, standby_addr = f"@bn-ops-leader-{tag}", f"@bn-ops-standby-{tag}"
    leader_sock, standby_sock = NotifySocket(leader_addr), NotifySocket(standby_addr)
    try:
        leader = DaemonProcess(tmp_path, cli_env(sim, tmp_path, NOTIFY_SOCKET=leader_addr, WATCHDOG_USEC="400000"))
        ready = leader_sock.wait_for("READY=1")  # the first poll has failed, at its backstop
        assert "STATUS=leader; 0 active calls, failing (1x)" in leader_sock.messages[ready]
        second = leader_sock.wait_for("STATUS=leader; 0 active calls, failing (2x)", ready + 1)
        fed = sum("WATCHDOG=1" in m for m in leader_sock.messages[ready + 1 : second])
        assert fed >= 5, leader_sock.messages[ready:second]  # ~11 in the 2.25 s of the second poll
        assert 'reason="GET /v1/calls/active: timed out after 2s (no answer)" failures=2' in leader.log, leader.log
        index = second

        standby = DaemonProcess(tmp_path, cli_env(sim, tmp_path, NOTIFY_SOCKET=standby_addr, WATCHDOG_USEC="400000"))
        host = socket.gethostname()
        seen = standby_sock.wait_for(f"STATUS=standby; leader: {host} pid {leader.pid}")
        standby_sock.wait_for("READY=1")
        for _ in range(5):
            seen = standby_sock.wait_for("WATCHDOG=1", seen + 1)
        assert f'standby leader="{host} pid {leader.pid}"' in standby.log, standby.log
        assert "became the leader" not in standby.log

        with sim.shared.lock:  # Bland answers again: the leader is healthy, still fed
            sim.shared.faults.clear()
        index = leader_sock.wait_for("STATUS=leader; 0 active calls, ok", index + 1)
        for _ in range(3):
            index = leader_sock.wait_for("WATCHDOG=1", index + 1)
        assert standby.stop() == 0
        assert leader.stop() == 0
    finally:
        leader_sock.close()
        standby_sock.close()


# -- 2. abandoned Apprise sends -----------------------------------------------------------------


def test_an_apprise_target_abandons_at_most_three_sends_and_starts_no_fourth(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    """README: sends that never finish are abandoned, at most 3 a target. The endpoint
    answers its headers and then a byte every 50 ms for two minutes: each send is given
    up at 2 * 500 ms + 1 s; with three of them still hanging, the next is not started
    (a failed attempt, retried later), and the endpoint never sees a fourth request."""
    abandoned = "no answer within 2s (abandoned; it may still arrive)"
    refused = "not sent: 3 earlier calls still hang; not starting another"
    with Receiver() as rx:
        rx.respond(trickle=120.0)
        write_config(
            tmp_path,
            sim,
            ANNOUNCE + f'[targets.chat]\nurl = "{apprise_json(rx)}"\ntimeout = "500ms"\nmin_interval = "0s"\n'
            'retry_initial = "100ms"\nretry_max = "200ms"\n'
            '[[rules]]\nname = "all"\nevents = ["call.appeared"]\ntargets = ["chat"]\ndigest_after = 0\n',
        )
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call(f"c{i}") for i in range(4)])
        daemon = DaemonProcess(tmp_path, env)

        def deliveries() -> list[dict[str, Any]]:
            return sorted(cli_json(["deliveries"], env, tmp_path), key=lambda d: d["id"])

        wait_for(lambda: len(from_store(tmp_path, lambda s: s.deliveries())) == 4)
        # Every delivery tried at least twice: the three abandoned ones have been refused since.
        rows = wait_for(lambda: (found := deliveries()) and all(d["attempts"] >= 2 for d in found) and found, 40)
        assert len(rx.received) == 3  # three sends reached the endpoint, never a fourth
        assert daemon.log.count(abandoned) == 3, daemon.log
        assert len(rows) == 4 and all(d["status"] == "pending" and d["target"] == "chat" for d in rows)
        assert [d["attempt_log"][0]["error"] for d in rows] == [abandoned, abandoned, abandoned, refused]
        assert all(d["last_error"] == refused for d in rows)
        assert all(a["outcome"] == "failed" for d in rows for a in d["attempt_log"])
        fourth = (
            rf'delivery failed; retrying in \d+ms target=chat delivery={rows[3]["id"]} \S+ attempt=1 error="{refused}"'
        )
        assert re.search(fourth, daemon.log), daemon.log
        assert daemon.stop() == 0  # the hanging threads do not hold up the exit
        assert len(rx.received) == 3


# -- 3. a template that fails on a real event -------------------------------------------------


def test_a_template_that_fails_on_a_real_event_is_sent_once_with_the_default_and_a_note(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    """README: should a rule's template still fail on a real event, the message is sent
    with the default template and a line saying why; it is never retried. The body
    divides by ``len(to) - 5``: fine on check's sample (+13105550123), a division by zero
    for a call to +1234."""
    with Receiver() as rx:
        path = write_config(
            tmp_path,
            sim,
            ANNOUNCE + f'[targets.chat]\nurl = "{apprise_json(rx)}"\nmin_interval = "0s"\n'
            '[[rules]]\nname = "odd"\nevents = ["call.appeared"]\ntargets = ["chat"]\n'
            'body = "{{ 60 // (call.to | length - 5) }} per digit"\n',
        )
        env = cli_env(sim, tmp_path)
        checked = run_cli(["check"], env, tmp_path)
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.startswith(f"{path.name}: valid")
        sim.set_calls([wire_call("short", to="+1234"), wire_call("normal", to="+13105550100")])
        daemon = DaemonProcess(tmp_path, env)

        def both_sent() -> list[Any] | None:
            rows = from_store(tmp_path, lambda s: s.deliveries(status="sent"))
            return rows if len(rows) == 2 else None

        sent = wait_for(both_sent)
        assert daemon.stop() == 0
    assert [d.attempts for d in sent] == [1, 1]  # sent at the first attempt: nothing to retry
    assert from_store(tmp_path, lambda s: s.deliveries(status="pending")) == []
    assert len(rx.received) == 2
    by_title = {r.json["title"]: r.json["message"] for r in rx.received}
    assert by_title["Call normal to +13105550100 appeared (QUEUED)"] == "8 per digit"  # the rule's template
    fallback = by_title["Call short to +1234 appeared (QUEUED)"]  # the default title ...
    assert fallback == (  # ... and the default body, with why
        "To: +1234  From: +14155550100\nStatus: QUEUED\nObjective: Confirm the appointment\nCall ID: short\n\n"
        "(the template of rule odd failed on this event: ZeroDivisionError: integer division or modulo by zero; "
        "this is the default template)"
    )


# -- 4. the Jinja2 sandbox ---------------------------------------------------------------------


def test_templates_that_reach_for_python_internals_are_refused_at_check_and_harmless_at_send(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    """Templates are sandboxed Jinja2: the classic escapes are a config error at check
    (exit 78, one line naming the rule and the refused attribute); one that only runs on
    a real event's data is caught at send time and the default template goes out, with
    the refusal as the note. No Python internals in any output."""
    env = cli_env(sim, tmp_path)
    path = tmp_path / "notifier.toml"
    cases = {
        "{{ ''.__class__.__mro__[1].__subclasses__() }}": "access to attribute '__class__' of 'str' object is unsafe.",
        "{{ cycler.__init__.__globals__ }}": "access to attribute '__init__' of 'type' object is unsafe.",
        "{{ lipsum.__globals__['os'].popen('id').read() }}": (
            "access to attribute '__globals__' of 'function' object is unsafe."
        ),
        "{{ '{0.__class__.__mro__}'.format(call.to) }}": "access to attribute '__class__' of 'str' object is unsafe.",
    }
    with Receiver() as rx:
        target = f'[targets.chat]\nurl = "{apprise_json(rx)}"\nmin_interval = "0s"\n'
        for template, refusal in cases.items():
            write_config(
                tmp_path,
                sim,
                target
                + '[[rules]]\nname = "evil"\nevents = ["call.appeared"]\ntargets = ["chat"]\n'
                + f"body = {json.dumps(template)}\n",
            )
            result = run_cli(["check"], env, tmp_path)
            assert result.returncode == 78, (template, result.stdout, result.stderr)
            assert result.stdout == ""
            (line,) = result.stderr.splitlines()
            assert line.startswith(f"notifier: config error: {path.name}: rules[0].body"), line
            assert "(rule 'evil')" in line and line.endswith(f"for call.appeared: SecurityError: {refusal}"), line
            assert "<class" not in result.stderr and "Traceback" not in result.stderr

        # Only a call to +19990000000 takes the forbidden branch: check's sample does not.
        write_config(
            tmp_path,
            sim,
            ANNOUNCE
            + target
            + '[[rules]]\nname = "sly"\nevents = ["call.appeared"]\ntargets = ["chat"]\n'
            + "body = \"{% if call.to == '+19990000000' %}{{ ''.__class__.__mro__[1].__subclasses__() }}"
            + '{% else %}plain{% endif %}"\n',
        )
        assert run_cli(["check"], env, tmp_path).returncode == 0
        sim.set_calls([wire_call("sly", to="+19990000000")])
        once = run_cli(["once"], env, tmp_path)
        assert once.returncode == 0, once.stderr
        (received,) = rx.received
    assert received.json["title"] == "Call sly to +19990000000 appeared (QUEUED)"
    assert received.json["message"].endswith(
        "(the template of rule sly failed on this event: SecurityError: "
        "access to attribute '__class__' of 'str' object is unsafe.; this is the default template)"
    )
    for text in (received.body.decode(), once.stderr):
        assert "<class" not in text and "subclasses" not in text.replace("__subclasses__", "")


# -- 5. a target removed by a reload ------------------------------------------------------------


def test_a_target_removed_by_sighup_has_its_pending_deliveries_dead_and_the_others_go_on(
    tmp_path: Path, sim: BlandSimulator
) -> None:
    with Receiver() as keep, Receiver() as gone:
        gone.respond(500)
        write_config(
            tmp_path,
            sim,
            ANNOUNCE
            + f'[targets.crm]\nurl = "{keep.url}"\n'
            + f'[targets.gone]\nurl = "{gone.url}"\nretry_initial = "100ms"\nretry_max = "200ms"\n'
            + '[[rules]]\nname = "all"\nevents = ["call.appeared"]\ntargets = ["crm", "gone"]\n',
        )
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("a"), wire_call("b")])
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: len(keep.received) == 2 and len(gone.received) >= 4)  # gone: each retried
        write_config(tmp_path, sim, announce_to(keep.url))  # the same, without target gone
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in daemon.log)
        assert "deliveries to removed targets are dead (redeliver re-queues them) count=2" in daemon.log
        tried = len(gone.received)

        dead = cli_json(["deliveries", "--status", "dead"], env, tmp_path)
        assert sorted(d["target"] for d in dead) == ["gone", "gone"]
        assert all(d["last_error"] == "the target is no longer in the configuration" for d in dead)
        assert all(d["finished_at"] and d["next_attempt_at"] is None for d in dead)
        assert all(d["attempt_log"] and d["attempt_log"][-1]["status_code"] == 500 for d in dead)
        assert cli_json(["deliveries", "--status", "pending"], env, tmp_path) == []

        sim.set_calls([wire_call("a"), wire_call("b"), wire_call("c")])
        wait_for(lambda: len(keep.received) == 3)
        assert keep.received[-1].json["data"]["call"]["call_id"] == "c"
        sent = cli_json(["deliveries", "--status", "sent"], env, tmp_path)
        assert [d["target"] for d in sent] == ["crm"] * 3
        assert len(gone.received) == tried  # no retry of a removed target since the reload
        assert daemon.stop() == 0


# -- 6. log levels ------------------------------------------------------------------------------

_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (debug|info|warning|error)\s+notifier: ", re.M)


def test_log_levels_from_the_environment_and_the_flag(tmp_path: Path, sim: BlandSimulator) -> None:
    """$NOTIFIER_LOG_LEVEL=debug adds a line per event and per delivery; --log-level
    warning (which wins over the environment) leaves out the per-poll and per-batch info
    lines, while warnings still come; an invalid level is exit 2 with a message."""
    noisy, quiet = tmp_path / "debug", tmp_path / "warning"
    noisy.mkdir()
    quiet.mkdir()
    with Receiver() as rx_noisy, Receiver() as rx_quiet:
        write_config(noisy, sim, announce_to(rx_noisy.url))
        write_config(quiet, sim, announce_to(rx_quiet.url))
        sim.set_calls([wire_call("a"), {"call_id": "no-status"}])  # the malformed entry: a warning a poll
        debug = DaemonProcess(noisy, cli_env(sim, noisy, NOTIFIER_LOG_LEVEL="debug"))
        warning = DaemonProcess(
            quiet, cli_env(sim, quiet, NOTIFIER_LOG_LEVEL="debug"), ["--log-level", "warning", "run"]
        )
        wait_for(lambda: rx_noisy.received and rx_quiet.received)
        wait_for(lambda: re.search(r" debug +notifier: delivered target=crm delivery=1 ", debug.log))
        wait_for(lambda: "skipped entries of the answer" in warning.log)
        assert debug.stop() == 0 and warning.stop() == 0
    event_id = rx_noisy.received[0].headers["webhook-id"]
    assert re.search(rf" debug +notifier: call\.appeared event_id={event_id} call_id=a$", debug.log, re.M), debug.log
    assert re.search(r" info +notifier: detected source=default events=1 call\.appeared=1$", debug.log, re.M)

    levels = _LINE.findall(warning.log)
    assert levels and len(levels) == len(warning.log.splitlines()), warning.log
    assert set(levels) == {"warning"}, warning.log
    for info_line in ("started", "became the leader", "detected", "delivery batch", "stopped"):
        assert info_line not in warning.log

    env = cli_env(sim, quiet, NOTIFIER_LOG_LEVEL="loud")
    bad = run_cli(["check"], env, quiet)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "notifier: invalid NOTIFIER_LOG_LEVEL 'loud'; use one of debug, info, warning, error\n"
    flag = run_cli(["--log-level", "loud", "check"], cli_env(sim, quiet), quiet)
    assert flag.returncode == 2 and "argument --log-level: invalid choice: 'loud'" in flag.stderr
    upper = run_cli(["check"], cli_env(sim, quiet, NOTIFIER_LOG_LEVEL="WARNING"), quiet)
    assert upper.returncode == 0, upper.stderr


# -- 7. max_answer_mb ----------------------------------------------------------------------------


def test_an_answer_over_max_answer_mb_fails_the_poll_and_records_no_call(tmp_path: Path, sim: BlandSimulator) -> None:
    too_large = "GET /v1/calls/active: the answer is larger than 1 MB (source.max_answer_mb); not read"
    sim.set_calls([wire_call(f"big{i}", objective="x" * 4000) for i in range(300)])  # ~1.25 MB
    assert len(sim.shared.active_body()) > 2**20
    write_config(tmp_path, sim, ANNOUNCE, source_extra="max_answer_mb = 1\n")
    env = cli_env(sim, tmp_path)
    failed = run_cli(["once"], env, tmp_path)
    assert failed.returncode == 1
    assert f'poll failed source=default reason="{too_large}" failures=1' in failed.stderr, failed.stderr
    (src,) = cli_json(["status"], env, tmp_path, (0, 1))["sources"]
    assert src["last_error"] == too_large and src["consecutive_failures"] == 1 and src["active_calls"] == {}
    assert src["last_successful_poll"] is None
    assert cli_json(["events"], env, tmp_path) == []

    write_config(tmp_path, sim, ANNOUNCE)  # the default limit, 256 MB
    done = run_cli(["once"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    events = cli_json(["events", "--limit", "0"], env, tmp_path)
    assert len(events) == 300 and {e["type"] for e in events} == {"call.appeared"}
    (src,) = cli_json(["status"], env, tmp_path, (0, 1))["sources"]
    assert src["last_error"] is None and src["consecutive_failures"] == 0 and src["active_calls"] == {"QUEUED": 300}


# -- 8. notifier simulate's flags ------------------------------------------------------------------


def test_simulate_flags_error_rate_credentials_and_seed(tmp_path: Path) -> None:
    key, org = "k-ops-1", "o-ops-1"
    env = cli_env(None, tmp_path)
    with (
        simulate(tmp_path, env, "--seed", "7", "--api-key", key, "--org-id", org, "--error-rate", "1") as failing,
        simulate(tmp_path, env, "--seed", "7", "--api-key", key, "--org-id", org) as one,
        simulate(tmp_path, env, "--seed", "7", "--api-key", key, "--org-id", org) as two,
        simulate(tmp_path, env, "--seed", "8", "--api-key", key, "--org-id", org) as other,
    ):
        for port, banner in (failing, one, two, other):
            assert banner[0] == f"Simulated Bland API on http://127.0.0.1:{port}"
            assert f'api_key = "{key}"' in banner and f'org_id = "{org}"' in banner

        # --seed: the same traffic twice (timestamps are the time of the first request), another seed other traffic
        first = [ask(port, key, org) for port in (one[0], two[0], other[0])]
        assert [status for status, _ in first] == [200, 200, 200]
        calls = [
            [{k: v for k, v in c.items() if k != "timestamp"} for c in json.loads(body)["data"]] for _, body in first
        ]
        assert len(calls[0]) >= 10 and calls[0] == calls[1]
        assert {c["call_id"] for c in calls[0]}.isdisjoint({c["call_id"] for c in calls[2]})

        # --api-key / --org-id: anything else is refused, as Bland refuses it
        for bad_key, bad_org in ((key + "x", org), (key, org + "x"), ("Bearer " + key, org)):
            status, body = ask(one[0], bad_key, bad_org)
            assert status == 401 and json.loads(body) == {"status": "error", "message": "Invalid API key"}

        # --error-rate 1: no poll is answered with calls
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: ask(failing[0], key, org), range(8)))
        assert {status for status, _ in answers} <= {500, 503, None}, answers  # None: no answer at all
        assert ask(failing[0], key + "x", org)[0] == 401  # a wrong key is still a wrong key


# -- 9. db copy from PostgreSQL to SQLite -----------------------------------------------------------


def test_db_copy_from_postgresql_to_sqlite_and_the_daemon_carries_on(
    tmp_path: Path, sim: BlandSimulator, postgres_url: str
) -> None:
    copy_url = f"sqlite:///{tmp_path}/copy.db"
    with Receiver() as crm, Receiver() as flaky:
        flaky.respond(500)

        def configure(storage_url: str) -> None:
            write_config(
                tmp_path,
                sim,
                ANNOUNCE
                + f'[targets.crm]\nurl = "{crm.url}"\n[targets.flaky]\nurl = "{flaky.url}"\n'
                + '[[rules]]\nname = "all"\nevents = ["call.*"]\ntargets = ["crm", "flaky"]\n',
                storage=f'url = "{storage_url}"',
            )

        configure(postgres_url)
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("a"), wire_call("b", "IN_PROGRESS")])
        assert run_cli(["once"], env, tmp_path).returncode == 0
        sim.set_calls([wire_call("b", "IN_PROGRESS")])
        assert run_cli(["once"], env, tmp_path).returncode == 0  # a ended
        first_tries = [r.headers["webhook-id"] for r in flaky.received]

        copied = run_cli(["db", "copy", "--to", copy_url], env, tmp_path)
        assert copied.returncode == 0, copied.stderr
        assert "4 events" in copied.stdout and "8 deliveries" in copied.stdout, copied.stdout
        assert f" to {tmp_path}/copy.db: " in copied.stdout
        old, new = Store(postgres_url, create=False), Store(copy_url, create=False)
        try:
            assert new.events() == old.events() and len(old.events()) == 4
            assert new.deliveries() == old.deliveries()
            assert [d.status for d in old.deliveries() if d.target == "flaky"] == ["pending"] * 4
            ids = [d.id for d in old.deliveries()]
            assert new.attempts_of(ids) == old.attempts_of(ids)
            assert new.load_state() == old.load_state()
            before = [e.id for e in old.events()]
        finally:
            old.close()
            new.close()

        configure(copy_url)  # the daemon now runs on the copy
        flaky.respond(200)
        sim.set_calls([wire_call("b", "IN_PROGRESS"), wire_call("c")])
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: len(crm.received) == 5 and len({r.headers["webhook-id"] for r in flaky.received}) == 5)
        store = Store(copy_url, create=False)
        try:
            wait_for(lambda: len(store.deliveries(status="sent")) == 10)
            events = store.events()
        finally:
            store.close()
        assert daemon.stop() == 0
    assert [e.id for e in events[:4]] == before
    assert [(e.type, e.call_id) for e in events] == [
        ("call.appeared", "a"),
        ("call.appeared", "b"),
        ("call.started", "b"),
        ("call.disappeared", "a"),
        ("call.appeared", "c"),  # nothing of a or b detected again
    ]
    number = [int(e.id.rsplit("_", 1)[1]) for e in events]
    assert number == list(range(number[0], number[0] + 5))  # ids continue after the copied ones
    assert events[4].id.rsplit("_", 1)[0] == events[0].id.rsplit("_", 1)[0]
    crm_ids = [r.headers["webhook-id"] for r in crm.received]
    assert sorted(crm_ids) == sorted(e.id for e in events)  # each event once: no copied one resent
    assert set(first_tries) == set(before)  # flaky had tried each of the 4 before the copy ...
    assert {r.headers["webhook-id"] for r in flaky.received} == {e.id for e in events}  # ... and got them after


# -- 10. once with several sources ------------------------------------------------------------------


def test_once_polls_every_source_and_records_each_events_source(tmp_path: Path) -> None:
    with BlandSimulator(seed=1) as east, BlandSimulator(seed=2) as west:
        (tmp_path / "notifier.toml").write_text(
            source("east", east, "KEY_EAST")
            + source("west", west, "KEY_WEST")
            + f'[storage]\nurl = "sqlite:///{tmp_path}/n.db"\n'
            + ANNOUNCE
        )
        env = cli_env(None, tmp_path, KEY_EAST=east.api_key, KEY_WEST=west.api_key)
        east.set_calls([wire_call("e1"), wire_call("same-id")])
        west.set_calls([wire_call("w1", "IN_PROGRESS"), wire_call("same-id")])
        done = run_cli(["once"], env, tmp_path)
        assert done.returncode == 0, done.stderr
        assert len(east.requests) == 1 and len(west.requests) == 1

        def recorded(*args: str) -> set[tuple[str, str, str]]:
            found = cli_json(["events", *args], env, tmp_path)
            return {(e["data"]["source"], e["type"], e["data"]["call"]["call_id"]) for e in found}

        assert recorded() == {
            ("east", "call.appeared", "e1"),
            ("east", "call.appeared", "same-id"),
            ("west", "call.appeared", "w1"),
            ("west", "call.started", "w1"),
            ("west", "call.appeared", "same-id"),
        }
        assert recorded("--source", "east") == {t for t in recorded() if t[0] == "east"}
        status = cli_json(["status"], env, tmp_path, (0, 1))
        assert {s["name"]: s["active_calls"] for s in status["sources"]} == {
            "east": {"QUEUED": 2},
            "west": {"IN_PROGRESS": 1, "QUEUED": 1},
        }

        # One source down: once says so (exit 1), the other is polled and recorded all the same.
        west.configure(outage=(0.0, 1e12))
        east.set_calls([wire_call("e1"), wire_call("same-id"), wire_call("e2")])
        failed = run_cli(["once"], env, tmp_path)
        assert failed.returncode == 1
        assert "poll failed source=west" in failed.stderr and "poll failed source=east" not in failed.stderr
        assert "detected source=east events=1 call.appeared=1" in failed.stderr
        assert ("east", "call.appeared", "e2") in recorded()
        by_name = {s["name"]: s for s in cli_json(["status"], env, tmp_path, (0, 1))["sources"]}
        assert by_name["west"]["consecutive_failures"] == 1 and "HTTP 503" in by_name["west"]["last_error"]
        assert by_name["east"]["consecutive_failures"] == 0 and by_name["east"]["active_calls"] == {"QUEUED": 3}


# -- 11. status --json -----------------------------------------------------------------------------


def test_status_json_names_the_leader_and_counts_the_queue(tmp_path: Path, sim: BlandSimulator) -> None:
    with Receiver() as rx:
        rx.respond(500)  # every delivery stays pending
        write_config(tmp_path, sim, announce_to(rx.url, extra='retry_initial = "1h"\nretry_max = "1h"\n'))
        env = cli_env(sim, tmp_path)
        sim.set_calls([wire_call("a"), wire_call("b")])
        started = time.time()
        daemon = DaemonProcess(tmp_path, env)

        def status() -> tuple[int, dict[str, Any]]:
            result = run_cli(["status", "--json"], env, tmp_path)
            return result.returncode, json.loads(result.stdout or "null")

        code, report = wait_for(lambda: (r := status())[1] and r[1]["queue"]["pending"] == 2 and r)
        now = time.time()
        assert code == 0
        leader = report["leader"]
        assert leader["host"] == socket.gethostname() and leader["pid"] == daemon.pid and leader["term"] == 1
        since = datetime.fromisoformat(leader["since"]).timestamp()
        assert started - 1 <= since <= now, (started, since, now)
        assert leader["since"].endswith("Z")
        assert 0 < leader["lease_expires_in_seconds"] <= 15
        pending = cli_json(["deliveries", "--status", "pending"], env, tmp_path)
        assert len(pending) == report["queue"]["pending"] == 2
        oldest = min(datetime.fromisoformat(d["created_at"]).timestamp() for d in pending)
        first = report["queue"]["oldest_seconds"]
        assert first >= 0 and abs(first - (now - oldest)) < 5, (first, now - oldest)
        _, later = wait_for(lambda: (r := status())[1]["queue"]["oldest_seconds"] >= first + 1.0 and r)
        assert later["queue"]["pending"] == 2 and later["leader"]["pid"] == daemon.pid
        assert daemon.stop() == 0
    code, after = status()
    assert code == 1 and after["leader"] is None and after["queue"]["pending"] == 2


# -- 12. the /etc fallback of the config path ---------------------------------------------------------


def test_without_config_flag_env_or_local_file_the_cli_reads_etc(tmp_path: Path, sim: BlandSimulator) -> None:
    """SPEC: PATH defaults to $NOTIFIER_CONFIG, then ./notifier.toml, then
    /etc/bland-notifier/notifier.toml. /etc is an overlay in a private mount namespace
    (its changes land in a tmpfs), so the real /etc is never touched."""
    etc_existed = Path("/etc/bland-notifier").exists()
    work = tmp_path / "cwd"
    work.mkdir()
    etc_config = write_config(tmp_path, sim, storage=f'url = "sqlite:///{tmp_path}/etc.db"', name="etc.toml")
    etc_config.write_text(etc_config.read_text().replace('poll_interval = "100ms"', 'poll_interval = "7s"'))
    env = cli_env(sim, work)
    assert "NOTIFIER_CONFIG" not in env

    from_etc = in_private_etc(tmp_path, etc_config, ["check"], env, work)
    assert from_etc.returncode == 0, from_etc.stderr
    assert from_etc.stdout.splitlines()[:2] == [
        "/etc/bland-notifier/notifier.toml: valid",
        f"source default: {sim.base_url} every 7s",
    ]
    once = in_private_etc(tmp_path, etc_config, ["once"], env, work)
    assert once.returncode == 0, once.stderr
    assert (tmp_path / "etc.db").exists()  # the /etc config's store was used

    missing = in_private_etc(tmp_path, None, ["check"], env, work)
    assert missing.returncode == 78
    assert (
        missing.stderr == "notifier: config error: notifier.toml: file not found (use --config or $NOTIFIER_CONFIG)\n"
    )

    write_config(work, sim)  # ./notifier.toml comes before /etc ...
    local = in_private_etc(tmp_path, etc_config, ["check"], env, work)
    assert local.returncode == 0 and local.stdout.splitlines()[:2] == [
        "notifier.toml: valid",
        f"source default: {sim.base_url} every 0.1s",
    ], local.stdout + local.stderr
    chosen = write_config(tmp_path, sim, name="chosen.toml")  # ... and $NOTIFIER_CONFIG before both
    named = in_private_etc(tmp_path, etc_config, ["check"], {**env, "NOTIFIER_CONFIG": str(chosen)}, work)
    assert named.returncode == 0 and named.stdout.startswith(f"{chosen}: valid"), named.stdout + named.stderr
    assert Path("/etc/bland-notifier").exists() == etc_existed


# -- helpers -----------------------------------------------------------------------------------------


@contextmanager
def simulate(directory: Path, env: dict[str, str], *args: str) -> Iterator[tuple[int, list[str]]]:
    """``notifier simulate`` as a process on a free port: (port, the lines it printed)."""
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "notifier", "simulate", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=directory,
        env=env,
    )
    try:
        banner: list[str] = []
        assert proc.stdout is not None
        while not banner or banner[-1] != "Ctrl-C stops it.":
            line = proc.stdout.readline()
            assert line, f"simulate exited: {proc.wait(10)} {proc.stderr.read() if proc.stderr else ''}"
            banner.append(line.rstrip("\n"))
        yield port, banner
    finally:
        proc.terminate()
        proc.wait(10)


def ask(port: int, key: str, org: str) -> tuple[int | None, bytes]:
    """``GET /v1/calls/active`` as the daemon asks it: (status, body); None when the
    server closed the connection without an answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/v1/calls/active", headers={"authorization": key, "x-bland-org-id": org})
        response = conn.getresponse()
        return response.status, response.read()
    except (http.client.RemoteDisconnected, ConnectionResetError):
        return None, b""
    finally:
        conn.close()


def in_private_etc(
    directory: Path, config: Path | None, args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """The CLI in its own mount namespace, where /etc is an overlay whose upper layer is a
    tmpfs and /etc/bland-notifier/notifier.toml is ``config`` (or absent)."""
    layer = directory / f"etc-layer-{time.monotonic_ns()}"
    layer.mkdir()
    q = shlex.quote
    script = "\n".join(
        [
            "set -e",
            f"mount -t tmpfs tmpfs {q(str(layer))}",
            f"mkdir {q(str(layer / 'upper'))} {q(str(layer / 'work'))}",
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={layer}/upper,workdir={layer}/work /etc",
            "rm -rf /etc/bland-notifier && mkdir /etc/bland-notifier",
            f"cp {q(str(config))} /etc/bland-notifier/notifier.toml" if config else "true",
            'exec "$@"',
        ]
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", PYTHON, "-m", "notifier", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_watchdog_stops_feeding_while_a_poll_is_hung_past_its_limit(tmp_path: Path) -> None:
    """README: "a hung daemon is restarted". Keep-alives go on while a poll is busy within
    the longest a working poll can take, stop once it is past that (systemd then kills and
    restarts the daemon), and resume if the poll comes back. A real hang past every
    timeout cannot be made to order, so the source loop's busy mark is set by hand."""
    import anyio

    from notifier.config import load_config
    from notifier.daemon import Daemon, _SourceLoop, _stall_limit
    from notifier.sdnotify import Notifier

    config = load_config(write_config(tmp_path, None), cli_env(None, tmp_path))
    address = f"@bland-notifier-watchdog-{os.getpid()}-{time.monotonic_ns()}"
    systemd = NotifySocket(address)
    systemd.sock.setblocking(False)
    daemon = Daemon(config, cli_env(None, tmp_path), notifier=Notifier(address))
    limit = _stall_limit(config.source)
    assert limit == (2 * 2.0 + 1.0) + 5.0 + 30 + 30.0  # the request's backstop, details, the lock, a margin

    def pings() -> int:
        count = 0
        while True:
            try:
                count += systemd.sock.recv(4096) == b"WATCHDOG=1"
            except BlockingIOError:
                return count

    async def phases() -> list[int]:
        loop = _SourceLoop(poller=None)  # type: ignore[arg-type]  # the watchdog reads busy_since only
        daemon._loops["default"] = loop
        seen = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon._watchdog, 0.05)
            for busy_for in (None, limit - 5.0, limit + 1.0, None):  # idle, busy, hung, back
                loop.busy_since = None if busy_for is None else time.monotonic() - busy_for
                pings()
                await anyio.sleep(0.5)
                seen.append(pings())
            tg.cancel_scope.cancel()
        return seen

    try:
        idle, busy, hung, back = anyio.run(phases)
    finally:
        systemd.close()
        daemon.store.close()
    assert idle >= 3 and busy >= 3 and back >= 3
    assert hung == 0
