"""Several Bland organisations in one daemon: their own state, schedule and health;
``source`` on every event and as a matcher; one source's trouble never slows another."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from notifier.config import ConfigError, load_config
from notifier.simulator import BlandSimulator, wire_call
from notifier.store import Store
from tests.conftest import DaemonProcess, cli_env, wait_for
from tests.receivers import Receiver
from tests.test_service import free_port, get


def source(name: str, sim: BlandSimulator, key_var: str) -> str:
    return textwrap.dedent(
        f"""
        [[sources]]
        name = "{name}"
        base_url = "{sim.base_url}"
        api_key = "${{{key_var}}}"
        org_id = "{sim.org_id}"
        poll_interval = "100ms"
        timeout = "3s"
        unreachable_after = "1s"
        """
    )


def test_config_accepts_sources_and_names_each_error(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    two = (
        '[[sources]]\nname = "us-east"\napi_key = "k1"\norg_id = "o1"\n'
        '[[sources]]\nname = "eu"\napi_key = "k2"\norg_id = "o2"\n'
    )
    rule = '[[rules]]\nname = "eu"\nevents = ["*"]\nmatch = [\'source = "eu"\']\ntargets = ["t"]\n'
    path.write_text(two + rule + '[targets.t]\nurl = "https://example.invalid/h"\n')
    config = load_config(path, {})
    assert list(config.sources) == ["us-east", "eu"]
    assert config.detect_for("eu").unreachable_after == 60.0
    assert {"k1", "o2"} <= set(config.secrets())
    for text, key, reason in [
        (two.replace('"eu"', '"us-east"'), "sources[1].name", "duplicate source name"),
        (two.replace('"eu"', '"EU"'), "sources[1].name", "lower-case letters"),
        ('[source]\napi_key = "k"\norg_id = "o"\n' + two, "sources", "not both"),
        ('[storage]\nurl = "sqlite:///x.db"\n', "source", "required section is missing"),
        ('[source]\nname = "x"\napi_key = "k"\norg_id = "o"\n', "source.name", "named 'default'"),
        (two.replace('org_id = "o2"', 'org_id = ""'), "sources[1].org_id", "must not be empty"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config(path, {})
        assert caught.value.key == key and reason in caught.value.reason, caught.value


def test_each_source_polls_on_its_own_and_events_say_which(tmp_path: Path) -> None:
    port = free_port()
    with BlandSimulator(seed=1) as east, BlandSimulator(seed=2) as west, Receiver() as rx:
        (tmp_path / "notifier.toml").write_text(
            source("east", east, "KEY_EAST")
            + source("west", west, "KEY_WEST")
            + f'[storage]\nurl = "sqlite:///{tmp_path}/n.db"\n[http]\nlisten = "127.0.0.1:{port}"\n'
            + "[detect]\nannounce_existing = true\n"
            + f'[targets.crm]\nurl = "{rx.url}"\n'
            + '[[rules]]\nname = "west only"\nevents = ["*"]\nmatch = [\'source = "west"\']\ntargets = ["crm"]\n'
        )
        east.set_calls([wire_call("same-id"), wire_call("e1")])
        west.set_calls([wire_call("same-id", "IN_PROGRESS")])  # call ids are per organisation
        env = cli_env(None, tmp_path, KEY_EAST=east.api_key, KEY_WEST=west.api_key)
        daemon = DaemonProcess(tmp_path, env)
        store = None
        try:
            wait_for(lambda: len(rx.received) == 2)  # west: appeared + started; east: not routed
            assert {(r.json["type"], r.json["data"]["source"]) for r in rx.received} == {
                ("call.appeared", "west"),
                ("call.started", "west"),
            }
            store = Store(f"sqlite:///{tmp_path}/n.db", create=False)  # the daemon made it before it sent
            wait_for(lambda: len(store.events(source="east")) == 2)
            assert {e.call_id for e in store.events(source="east")} == {"same-id", "e1"}
            assert {e.data["call"]["status"] for e in store.events(source="west")} == {"IN_PROGRESS"}

            # East answers slowly, then not at all: west keeps its 100 ms schedule.
            east.configure(latency=2.5)
            time.sleep(0.5)
            before = len(west.requests)
            time.sleep(2.0)
            assert len(west.requests) - before >= 10, len(west.requests) - before
            east.configure(latency=0.0, outage=(0.0, 1e12))
            wait_for(lambda: any(e.type == "source.unreachable" for e in store.events(source="east")))
            assert not any(e.type == "source.unreachable" for e in store.events(source="west"))
            code, body = get(f"http://127.0.0.1:{port}/healthz")
            health = json.loads(body)
            assert code == 503 and health["status"] == "unreachable"
            assert health["sources"]["east"]["status"] == "unreachable"
            assert health["sources"]["west"]["status"] == "ok"
            metrics = get(f"http://127.0.0.1:{port}/metrics")[1].decode()
            assert 'notifier_source_up{source="east"} 0.0' in metrics
            assert 'notifier_source_up{source="west"} 1.0' in metrics
            assert 'notifier_active_calls{source="west",status="IN_PROGRESS"} 1.0' in metrics
            east.configure(outage=(0.0, 0.0))
            wait_for(lambda: any(e.type == "source.recovered" for e in store.events(source="east")))
            assert daemon.stop() == 0
        finally:
            if store is not None:
                store.close()


def test_the_polls_of_several_sources_are_spread_over_the_interval(tmp_path: Path) -> None:
    """Each source keeps its own place in the interval after the first polls of a term,
    so that many sources do not all fetch, decode and commit at the same moment."""
    names, interval = ["a", "b", "c", "d"], 0.8
    sims = [BlandSimulator(seed=n).start() for n in range(len(names))]
    try:
        (tmp_path / "notifier.toml").write_text(
            "".join(
                source(name, sim, f"KEY_{name.upper()}").replace('"100ms"', f'"{interval}s"')
                for name, sim in zip(names, sims, strict=True)
            )
            + f'[storage]\nurl = "sqlite:///{tmp_path}/n.db"\n'
        )
        env = cli_env(None, tmp_path, **{f"KEY_{n.upper()}": s.api_key for n, s in zip(names, sims, strict=True)})
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: (tmp_path / "n.db").exists())
        store = Store(f"sqlite:///{tmp_path}/n.db", create=False)
        try:

            def polls() -> dict[str, list[float]]:
                try:
                    with store.engine.connect() as conn:
                        rows = conn.exec_driver_sql("SELECT source, at FROM polls WHERE ok ORDER BY id").all()
                except OperationalError:  # not migrated yet
                    return {}
                seen: dict[str, list[float]] = {}
                for name, at in rows:
                    seen.setdefault(name, []).append(at)
                return seen

            seen = wait_for(lambda: (p := polls()) and all(len(p.get(n, [])) >= 4 for n in names) and p, timeout=30)
            firsts = [seen[n][0] for n in names]
            assert max(firsts) - min(firsts) < interval / 2  # a term starts with every source at once
            phases = sorted((seen[n][3] - seen["a"][3]) % interval for n in names)
            gaps = [later - earlier for earlier, later in zip(phases, [*phases[1:], phases[0] + interval], strict=True)]
            assert min(gaps) > interval / len(names) / 3, phases  # ~0.2 s apart; at once, ~0
            assert daemon.stop() == 0
        finally:
            store.close()
    finally:
        for sim in sims:
            sim.stop()
