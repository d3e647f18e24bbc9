"""The simulator and the demo: Bland's wire format, auth, a realistic traffic model."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from notifier.bland import decode_active_calls
from notifier.simulator import BlandSimulator
from notifier.traffic import TrafficModel
from tests.conftest import PYTHON, cli_env, run_cli, wait_for


def test_traffic_model_is_seedable_and_realistic() -> None:
    def run(seed: int) -> list[list[dict[str, str]]]:
        model = TrafficModel(seed)
        frames = []
        for second in range(0, 3600, 5):
            model.tick(1_800_000_000.0 + second)
            frames.append(model.active(1_800_000_000.0 + second))
        return frames

    frames = run(7)
    assert frames == run(7) and frames != run(8)
    seen: dict[str, list[str]] = {}
    for frame in frames:
        for entry in frame:
            assert all(isinstance(v, str) for v in entry.values())
            assert entry["status"] in ("QUEUED", "IN_PROGRESS")
            assert (entry["start_time"] == "") == (entry["status"] == "QUEUED")
            seen.setdefault(entry["call_id"], []).append(entry["status"])
    assert len(seen) > 100
    for statuses in seen.values():  # QUEUED then IN_PROGRESS, never back
        assert statuses == sorted(statuses, key=lambda s: s == "IN_PROGRESS")
    waits = [s.count("QUEUED") * 5 for s in seen.values()]
    assert max(waits) >= 120  # a long tail: some calls would count as stuck
    assert sum(1 for s in seen.values() if "IN_PROGRESS" not in s) >= 1
    intl = sum(1 for f in frames for e in f if e["international"] == "true")
    assert 0 < intl < sum(len(f) for f in frames) / 2


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_simulator_speaks_blands_format_and_checks_auth() -> None:
    with BlandSimulator(seed=3) as sim:
        model = TrafficModel(3, time_scale=0.01)
        sim.drive(model)
        auth = {"authorization": sim.api_key, "x-bland-org-id": sim.org_id}
        assert get(sim.base_url + "/v1/calls/active")[0] == 401
        assert get(sim.base_url + "/v1/calls/active", {**auth, "authorization": "Bearer " + sim.api_key})[0] == 401
        status, body = get(sim.base_url + "/v1/calls/active", auth)
        assert status == 200 and json.loads(body)["errors"] is None
        assert decode_active_calls(body).skipped == 0
        # Each request advances the model; poll until some call has ended.
        ended = wait_for(
            lambda: (get(sim.base_url + "/v1/calls/active", auth), dict(sim.shared.details))[1],
            timeout=30,
            interval=0.2,
        )
        call_id = next(iter(ended))
        status, body = get(f"{sim.base_url}/v1/calls/{call_id}", auth)
        assert status == 200 and json.loads(body)["completed"] is True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_simulate_command_prints_what_to_configure(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "notifier",
            "simulate",
            "--port",
            str(port),
            "--seed",
            "1",
            "--api-key",
            "k-123",
            "--org-id",
            "o-1",
            "--outage",
            "0s:1h",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=cli_env(None, tmp_path),
    )
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}" in first
        status, _ = get(f"http://127.0.0.1:{port}/v1/calls/active", {"authorization": "k-123", "x-bland-org-id": "o-1"})
        assert status == 503  # inside the outage window
    finally:
        proc.terminate()
        proc.wait(10)


def test_demo_shows_every_kind_of_notification_within_30_seconds(tmp_path: Path) -> None:
    result = run_cli(["demo", "--seed", "1", "--duration", "30s"], cli_env(None, tmp_path), tmp_path, timeout=90)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for needle in ("appeared (QUEUED)", "started", "stuck in queue for", "ended", "Summary", "deliveries:"):
        assert needle in out, needle
    # An ended call shows its outcome, not the status it last had, in one unit system;
    # the summary uses the cards' words.
    ended = out.split(" ended", 1)[1].split("\n\n", 1)[0]
    assert "Outcome: " in ended and "Status:" not in ended and " min" not in ended, ended
    assert re.search(r"^  ended +\d+   \(call\.disappeared\)$", out, re.M), out[-600:]
    # the backlog episode: a campaign-health condition fires and resolves within the run
    assert re.search(r"queue backlog: \d+ calls queued on pathway_id pw-appointments", out), out[-600:]
    assert "queue backlog resolved: " in out
    assert "\x1b[" not in out  # not a terminal: plain text
    assert result.stderr == ""


def test_timeout_ends_the_demo_cleanly(tmp_path: Path) -> None:
    """`timeout -s INT` signals the demo and then its whole process group: two SIGINTs,
    the second while the first is being handled. Still a clean stop and the summary."""
    result = subprocess.run(
        ["timeout", "-s", "INT", "6", PYTHON, "-m", "notifier", "demo", "--seed", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(None, tmp_path),
        timeout=60,
    )
    assert result.returncode == 124  # timeout's own code: it had to send the signal
    assert "Summary" in result.stdout, result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr


def test_the_demo_serves_its_console_read_only(tmp_path: Path) -> None:
    """README: `notifier demo` serves the console, and it takes no changes (no token).
    A SIGTERM stops it (with its summary) before its duration is up."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "notifier", "demo", "--seed", "3", "--duration", "60s"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=cli_env(None, tmp_path),
    )
    try:
        assert proc.stdout is not None
        lines = iter(proc.stdout.readline, "")
        url = next(m[1] for line in lines if (m := re.search(r"console is at (http://\S+/)", line)))
        next(line for line in lines if "appeared (QUEUED)" in line)  # the first poll is in
        status, body = get(url + "api/v1/status")
        report = json.loads(body)
        assert status == 200 and report["role"] == "leader", report
        assert report["read_only_reason"] == "changes are off: no [http] token is configured"
        assert "call.appeared" in get(url + "api/v1/events?type=call.appeared")[1].decode()
        page = get(url)[1].decode()
        assert "bland-notifier" in page and "no [http] token is configured" in page
        refused = urllib.request.Request(
            url + "api/v1/silences",
            data=b'{"matchers": ["type=call.stuck_queued"], "duration": "1h", "comment": "x"}',
            headers={"content-type": "application/json", "authorization": "Bearer " + "x" * 20},
        )
        try:
            urllib.request.urlopen(refused, timeout=10)
        except urllib.error.HTTPError as error:
            assert error.code == 403
        else:
            raise AssertionError("the demo took a change")
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)  # well before the 60 s
        assert proc.returncode == 0 and "Summary" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
