"""Read commands beside a running daemon: they need only [storage], never create a
database, and `status` says who leads and how each source is doing (SPEC)."""

from __future__ import annotations

import json
from pathlib import Path

from notifier.simulator import BlandSimulator, wire_call
from tests.conftest import DaemonProcess, cli_env, run_cli, wait_for, write_config

ANNOUNCE = "[detect]\nannounce_existing = true\n"


def storage_only(directory: Path, url: str) -> Path:
    """What a host that reads the store has: no API key, no target secret, no credential."""
    path = directory / "reader.toml"
    path.write_text(f'[storage]\nurl = "{url}"\n')
    return path


def test_read_commands_need_only_storage_and_work_beside_the_daemon(
    tmp_path: Path, sim: BlandSimulator, store_url: str
) -> None:
    write_config(tmp_path, sim, ANNOUNCE, storage=f'url = "{store_url}"')
    sim.set_calls([wire_call("a"), wire_call("b", "IN_PROGRESS")])
    daemon = DaemonProcess(tmp_path, cli_env(sim, tmp_path))
    reader = storage_only(tmp_path, store_url)
    env = cli_env(None, tmp_path)
    del env["TEST_BLAND_KEY"]  # the main config's ${TEST_BLAND_KEY} would not resolve here

    def cli(*args: str):  # type: ignore[no-untyped-def]
        return run_cli(["--config", str(reader), *args], env, tmp_path)

    wait_for(lambda: cli("events").stdout.count("call.appeared") == 2)
    found = json.loads(cli("events", "--json", "--source", "default").stdout)
    assert {e["type"] for e in found} == {"call.appeared", "call.started"}
    assert all(e["data"]["source"] == "default" for e in found)
    assert json.loads(cli("events", "--json", "--source", "other").stdout) == []
    assert cli("deliveries").returncode == 0

    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["leader"]["pid"] == daemon.pid and report["leader"]["term"] == 1
    (source,) = report["sources"]
    assert (
        source["name"] == "default"
        and source["reachable"]
        and source["active_calls"]
        == {
            "IN_PROGRESS": 1,
            "QUEUED": 1,
        }
    )
    text = cli("status").stdout
    assert f"pid {daemon.pid}" in text and "source default: reachable" in text, text

    sim.configure(outage=(0.0, 1e12))  # unreachable_after is 1s in these configs
    wait_for(lambda: cli("status").returncode == 1 and "UNREACHABLE" in cli("status").stdout)
    assert daemon.stop() == 0
    after = cli("status")
    assert after.returncode == 1 and "leader: none" in after.stdout


def test_read_commands_never_create_a_database(tmp_path: Path) -> None:
    reader = storage_only(tmp_path, f"sqlite:///{tmp_path}/missing.db")
    for command in (["events"], ["deliveries"], ["status"], ["redeliver", "--all-dead"]):
        result = run_cli(["--config", str(reader), *command], cli_env(None, tmp_path), tmp_path)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.strip() == f"notifier: no database at {tmp_path}/missing.db"
    assert not (tmp_path / "missing.db").exists()


def test_a_database_of_an_older_schema_says_how_to_upgrade(tmp_path: Path) -> None:
    from notifier.migrate import upgrade
    from notifier.store import Store

    store = Store(f"sqlite:///{tmp_path}/old.db")
    upgrade(store.engine, "0001")
    store.close()
    reader = storage_only(tmp_path, f"sqlite:///{tmp_path}/old.db")
    result = run_cli(["--config", str(reader), "events"], cli_env(None, tmp_path), tmp_path)
    assert result.returncode == 1
    assert "has schema 0001; 'notifier db upgrade'" in result.stderr
