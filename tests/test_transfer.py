"""`notifier db copy`: a SQLite store moved to PostgreSQL carries on where it stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from notifier.detect import DetectSettings, detect
from notifier.lease import Lease
from notifier.route import PlannedDelivery
from notifier.store import AttemptRecord, PollRecord, Store, StoreError
from notifier.store.transfer import copy_store
from tests.conftest import cli_env, run_cli
from tests.test_detect import T0, call, snap

CFG = DetectSettings(announce_existing=True)


def seeded(path: Path) -> Store:
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    t = detect(store.load_state(), snap(call("a"), call("b", "IN_PROGRESS")), T0, CFG)
    store.commit_poll(t, [PlannedDelivery("crm", "all", (e.id,)) for e in t.events], PollRecord(T0, 0.1, True, 2))
    first = store.deliveries()[0]
    store.record_attempt(first, AttemptRecord(T0, "sent", 200, None, 0.01))
    t2 = detect(t.state, snap(call("b", "IN_PROGRESS")), T0 + 5, CFG)
    store.commit_poll(t2, [], PollRecord(T0 + 5, 0.1, True, 1))
    lease = Lease(store, 30)
    assert lease.attempt()
    lease.release()  # terms 1 was used: the copy must keep terms growing
    return store


def test_a_store_copied_to_postgresql_carries_on(tmp_path: Path, postgres_url: str) -> None:
    source = seeded(tmp_path / "old.db")
    target = Store(postgres_url)
    target.upgrade()
    copied = copy_store(source, target)
    assert copied["events"] == 4 and copied["deliveries"] == 3 and copied["attempts"] == 1 and copied["calls"] == 1
    assert target.load_state() == source.load_state()
    assert target.events() == source.events()
    assert target.deliveries() == source.deliveries()
    lease = Lease(target, 30)
    assert lease.attempt() and lease.term is not None and lease.term.number == 2
    # The next poll numbers its events after the copied ones and its rows after theirs.
    state = target.load_state()
    t = detect(state, snap(call("b", "IN_PROGRESS"), call("c")), T0 + 10, CFG)
    target.commit_poll(
        t, [PlannedDelivery("crm", "all", (t.events[0].id,))], PollRecord(T0 + 10, 0.1, True), lease.check()
    )
    ids = [e.id for e in target.events()]
    assert len(ids) == 5 and ids[-1].endswith("_0000000005")
    with pytest.raises(StoreError, match="already holds data"):
        copy_store(source, target)
    source.close()
    target.close()


def test_db_copy_refuses_while_a_daemon_leads(tmp_path: Path, postgres_url: str) -> None:
    source = seeded(tmp_path / "old.db")
    lease = Lease(source, 30)
    assert lease.attempt()
    config = tmp_path / "notifier.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/old.db"\n')
    env = cli_env(None, tmp_path)
    refused = run_cli(["--config", str(config), "db", "copy", "--to", postgres_url], env, tmp_path)
    assert refused.returncode == 1 and "stop every daemon before copying" in refused.stderr
    lease.release()
    done = run_cli(["--config", str(config), "db", "copy", "--to", postgres_url], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "4 events" in done.stdout and "postgresql+psycopg://postgres@127.0.0.1" in done.stdout
    source.close()


def test_a_password_from_a_credential_is_percent_encoded_and_never_shown(tmp_path: Path, postgres_url: str) -> None:
    """README's two-node setup: the password lives in a credential file, as it is."""
    from notifier.config import load_storage

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "db_password").write_text("p@ss:w/rd#1\n")
    config = tmp_path / "n.toml"
    config.write_text('[storage]\nurl = "postgresql+psycopg://notifier:${credential:db_password}@db.internal:5432/n"\n')
    storage = load_storage(config, {"CREDENTIALS_DIRECTORY": str(creds)})
    from sqlalchemy.engine import make_url

    parsed = make_url(storage.url)
    assert (parsed.password, parsed.host, parsed.port) == ("p@ss:w/rd#1", "db.internal", 5432)
    source = seeded(tmp_path / "old.db")
    source.close()
    (tmp_path / "old.toml").write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/old.db"\n')
    env = cli_env(None, tmp_path, CREDENTIALS_DIRECTORY=str(creds))
    target = postgres_url.replace("postgres@", "postgres:${credential:db_password}@")  # trust auth: any password
    done = run_cli(["--config", str(tmp_path / "old.toml"), "db", "copy", "--to", target], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "p@ss" not in done.stdout + done.stderr and "p%40ss" not in done.stdout + done.stderr
    assert "postgres:***@127.0.0.1" in done.stdout
