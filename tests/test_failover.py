"""Several daemons on one store, as real processes: one leader, fenced; failover on
SIGKILL, SIGTERM, SIGSTOP, a PostgreSQL restart and a partition; every call's events
reach the webhook exactly once by id (a resend only with the same ``webhook-id``)."""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from notifier.lease import read_leader
from notifier.simulator import BlandSimulator, wire_call
from notifier.store import Store, StoreError
from tests.conftest import DaemonProcess, announce_to, cli_env, run_cli, wait_for, write_config
from tests.postgres import PostgresCluster
from tests.proxy import Proxy
from tests.receivers import Receiver

LEASE = 2.0
INTERVAL = 0.1
#: What a loaded 2-core machine adds to a failover on top of SPEC's bound (process
#: scheduling, the first poll's round trip); the measured figures are in BENCHMARKS.md.
SLACK = 1.0


class Traffic:
    """Upstream keeps changing while daemons come and go: calls arrive, start, end.
    Each call lives long enough to be seen by whoever leads after a failover (a call
    that comes and goes while nobody polls can never be observed)."""

    MIN_LIFE = LEASE + 3.0

    def __init__(self, sim: BlandSimulator, seed: int = 7) -> None:
        self.sim, self.rng = sim, random.Random(seed)
        self.live: dict[str, tuple[str, float]] = {}
        self.ever: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def ended(self) -> set[str]:
        return self.ever - set(self.live)

    def _run(self) -> None:
        while not self._stop.wait(0.15):
            now = time.monotonic()
            for cid, (status, born) in list(self.live.items()):
                roll = self.rng.random()
                if now - born > self.MIN_LIFE and roll < 0.2:
                    del self.live[cid]
                elif status == "QUEUED" and roll < 0.3:
                    self.live[cid] = ("IN_PROGRESS", born)
            for _ in range(self.rng.randint(0, 3)):
                self._n += 1
                cid = f"c{self._n}"
                self.live[cid] = ("QUEUED", now)
                self.ever.add(cid)
            self.sim.set_calls([wire_call(cid, status) for cid, (status, _) in self.live.items()])


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def configure(tmp_path: Path, sim: BlandSimulator, rx: Receiver, url: str, name: str = "notifier.toml") -> Path:
    return write_config(
        tmp_path,
        sim,
        announce_to(rx.url, events='"call.appeared", "call.started", "call.disappeared"'),
        storage=f'url = "{url}"\nlease = "{LEASE:g}s"',
        name=name,
    )


def start(tmp_path: Path, sim: BlandSimulator, config: str = "notifier.toml") -> DaemonProcess:
    return DaemonProcess(tmp_path, cli_env(sim, tmp_path), ["--config", str(tmp_path / config), "run"])


def leader_pid(url: str) -> int | None:
    """The leader's pid; None while nobody leads, or before the first daemon made the store."""
    try:
        store = Store(url, create=False)
    except StoreError:
        return None
    try:
        info = read_leader(store)
    except (OperationalError, ProgrammingError):  # no leader table yet
        return None
    finally:
        store.close()
    return info.pid if info is not None and info.held else None


def last_poll(url: str) -> float:
    store = Store(url, create=False)
    try:
        with store.engine.connect() as conn:
            return float(conn.exec_driver_sql("SELECT coalesce(max(at), 0) FROM polls WHERE ok").scalar())
    finally:
        store.close()


def wait_for_leader(url: str, among: list[DaemonProcess], timeout: float = 20) -> DaemonProcess:
    pids = {d.pid: d for d in among}
    return pids[wait_for(lambda: (pid := leader_pid(url)) in pids and pid, timeout=timeout)]


def leader_and_standby(tmp_path: Path, sim: BlandSimulator, url: str) -> tuple[DaemonProcess, DaemonProcess]:
    """Two daemons on one store, once one leads and the other knows it is a standby."""
    daemons = [start(tmp_path, sim), start(tmp_path, sim)]
    leader = wait_for_leader(url, daemons)
    (standby,) = (d for d in daemons if d is not leader)
    wait_for(lambda: "standby" in standby.log)
    return leader, standby


def failover_seconds(url: str, since: float, among: list[DaemonProcess]) -> tuple[DaemonProcess, float]:
    """Wait for one of ``among`` to lead and commit a poll; seconds from ``since`` (wall clock)."""
    leader = wait_for_leader(url, among)
    wait_for(lambda: last_poll(url) > since)
    return leader, last_poll(url) - since


def assert_exactly_once(rx: Receiver, traffic: Traffic) -> None:
    wait_for(lambda: len(traffic.ended) >= 3 and len(traffic.ever) >= 20, timeout=30)  # enough churn
    traffic.stop()
    ended = traffic.ended

    def kinds() -> Counter[tuple[str, str]]:
        first = {}
        for r in rx.received:
            first.setdefault(r.headers["webhook-id"], r.json)
        return Counter((b["type"], b["data"]["call"]["call_id"]) for b in first.values())

    def complete() -> bool:
        seen = kinds()
        return all(seen[("call.appeared", c)] for c in traffic.ever) and all(
            seen[("call.disappeared", c)] for c in ended
        )

    wait_for(complete, timeout=30)
    seen = kinds()
    twice = {k: n for k, n in seen.items() if n > 1}
    assert not twice, f"emitted twice under different ids: {twice}"
    assert all(r.verified is None for r in rx.received)


def test_sigkill_of_the_leader_mid_burst_fails_over_and_loses_nothing(
    tmp_path: Path, sim: BlandSimulator, rx: Receiver, store_url: str
) -> None:
    configure(tmp_path, sim, rx, store_url)
    with Traffic(sim) as traffic:
        daemons = [start(tmp_path, sim), start(tmp_path, sim)]
        figures = []
        for _ in range(2):
            leader = wait_for_leader(store_url, daemons)
            wait_for(lambda: len(rx.received) > 5)
            time.sleep(random.uniform(0.2, 0.6))
            killed_at = time.time()
            leader.kill()
            daemons.remove(leader)
            successor, took = failover_seconds(store_url, killed_at, daemons)
            figures.append(took)
            assert took <= LEASE + INTERVAL + SLACK, figures
            daemons.append(start(tmp_path, sim))  # systemd restarts it: a standby now
        assert_exactly_once(rx, traffic)
    for daemon in daemons:
        assert daemon.stop() == 0
    assert all("UNIQUE" not in d.log and "Traceback" not in d.log for d in daemons)


def test_a_clean_stop_hands_over_within_an_interval_and_a_second(
    tmp_path: Path, sim: BlandSimulator, rx: Receiver, store_url: str
) -> None:
    configure(tmp_path, sim, rx, store_url)
    with Traffic(sim) as traffic:
        leader, standby = leader_and_standby(tmp_path, sim, store_url)
        wait_for(lambda: len(rx.received) > 5)
        assert leader.stop() == 0
        stopped_at = time.time()
        assert "gave the lease up" in leader.log
        successor, took = failover_seconds(store_url, stopped_at, [standby])
        assert took <= INTERVAL + 1.0 + SLACK, took
        assert_exactly_once(rx, traffic)
    assert standby.stop() == 0


def test_a_paused_leader_wakes_up_deposed_and_commits_nothing(
    tmp_path: Path, sim: BlandSimulator, rx: Receiver, store_url: str
) -> None:
    configure(tmp_path, sim, rx, store_url)
    with Traffic(sim) as traffic:
        leader, standby = leader_and_standby(tmp_path, sim, store_url)
        wait_for(lambda: len(rx.received) > 5)
        leader.proc.send_signal(signal.SIGSTOP)
        paused_at = time.time()
        successor, took = failover_seconds(store_url, paused_at, [standby])
        assert took <= LEASE + INTERVAL + SLACK, took
        time.sleep(LEASE)  # the old leader sleeps on, well past its lease
        leader.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "no longer the leader" in leader.log)
        assert leader_pid(store_url) == standby.pid
        assert_exactly_once(rx, traffic)
    assert leader.stop() == 0 and standby.stop() == 0


def test_once_and_a_second_run_beside_a_running_daemon(
    tmp_path: Path, sim: BlandSimulator, rx: Receiver, store_url: str
) -> None:
    """The wedge of the first release: a second writer moved the stored event numbers
    and every later poll of the daemon failed with a UNIQUE constraint."""
    configure(tmp_path, sim, rx, store_url)
    sim.set_calls([wire_call("a")])
    daemon = start(tmp_path, sim)
    wait_for(lambda: rx.received)
    once = run_cli(["--config", str(tmp_path / "notifier.toml"), "once"], cli_env(sim, tmp_path), tmp_path)
    assert once.returncode == 75, once.stderr
    assert f"pid {daemon.pid}" in once.stderr and "leads" in once.stderr and "did nothing" in once.stderr
    second = start(tmp_path, sim)
    wait_for(lambda: "standby" in second.log)
    sim.set_calls([wire_call("a"), wire_call("b")])
    wait_for(lambda: {r.json["data"]["call"]["call_id"] for r in rx.received} == {"a", "b"})
    assert leader_pid(store_url) == daemon.pid
    assert second.stop() == 0 and daemon.stop() == 0
    assert len({r.headers["webhook-id"] for r in rx.received}) == 2
    for d in (daemon, second):
        assert "UNIQUE" not in d.log and "could not record" not in d.log, d.log


def test_a_postgresql_restart_under_running_daemons_loses_nothing(
    tmp_path: Path, sim: BlandSimulator, rx: Receiver, postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    configure(tmp_path, sim, rx, postgres_url)
    with Traffic(sim) as traffic:
        daemons = [start(tmp_path, sim), start(tmp_path, sim)]
        wait_for_leader(postgres_url, daemons)
        wait_for(lambda: len(rx.received) > 5)
        postgres_cluster.restart()
        restarted_at = time.time()
        wait_for(lambda: last_poll(postgres_url) > restarted_at + 1, timeout=30)
        assert_exactly_once(rx, traffic)
    for daemon in daemons:
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log


def test_a_leader_cut_off_from_postgresql_goes_quiet_and_a_standby_takes_over(
    tmp_path: Path, sim: BlandSimulator, rx: Receiver, postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    with Proxy(postgres_cluster.port) as proxy:
        configure(tmp_path, sim, rx, postgres_url)
        configure(tmp_path, sim, rx, postgres_url.replace(f":{postgres_cluster.port}/", f":{proxy.port}/"), "cut.toml")
        with Traffic(sim) as traffic:
            behind = start(tmp_path, sim, "cut.toml")
            wait_for_leader(postgres_url, [behind])
            direct = start(tmp_path, sim)
            wait_for(lambda: "standby" in direct.log)
            wait_for(lambda: len(rx.received) > 5)
            proxy.cut()
            cut_at = time.time()
            # It stops acting by its own clock, before its lease can have run out ...
            wait_for(lambda: "no longer the leader" in behind.log, timeout=LEASE + 1)
            quiet_at = time.time()
            assert quiet_at - cut_at <= LEASE, quiet_at - cut_at
            sent = len(rx.received)
            # ... and a standby leads within lease + poll_interval.
            successor, took = failover_seconds(postgres_url, cut_at, [direct])
            assert took <= LEASE + INTERVAL + SLACK, took
            proxy.heal()
            assert_exactly_once(rx, traffic)
            assert len(rx.received) >= sent
        assert direct.stop() == 0
        assert behind.stop() == 0


def test_roles_in_health_and_metrics_and_a_lost_store_is_503_on_both(
    tmp_path: Path, sim: BlandSimulator, rx: Receiver, postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    from tests.test_service import free_port, get

    with Proxy(postgres_cluster.port) as proxy:
        url = postgres_url.replace(f":{postgres_cluster.port}/", f":{proxy.port}/")
        ports = [free_port(), free_port()]
        for index, port in enumerate(ports):
            path = configure(tmp_path, sim, rx, url, f"d{index}.toml")
            path.write_text(path.read_text() + f'[http]\nlisten = "127.0.0.1:{port}"\n')
        sim.set_calls([wire_call("a")])
        daemons = [start(tmp_path, sim, "d0.toml")]
        wait_for_leader(postgres_url, daemons)
        daemons.append(start(tmp_path, sim, "d1.toml"))
        wait_for(lambda: "standby" in daemons[1].log)

        def health(port: int) -> tuple[int, dict]:
            code, body = get(f"http://127.0.0.1:{port}/healthz")
            return code, json.loads(body) if body else {}

        code, leader = wait_for(lambda: (h := health(ports[0]))[1].get("status") == "ok" and h)
        assert code == 200 and leader["role"] == "leader" and leader["sources"]["default"]["active_calls"] == 1
        code, standby = health(ports[1])
        assert code == 200 and standby["status"] == "standby" and standby["role"] == "standby"
        assert standby["leader"] == f"{socket.gethostname()} pid {daemons[0].pid}" and standby["sources"] == {}
        for port, value in zip(ports, ("1.0", "0.0"), strict=True):
            assert f"notifier_leader {value}" in get(f"http://127.0.0.1:{port}/metrics")[1].decode()

        proxy.cut()
        for port in ports:
            code, body = wait_for(lambda: (h := health(port))[0] == 503 and h, timeout=LEASE + 10)  # noqa: B023
            assert body["status"] == "store unavailable" and body["store"], body
        assert health(ports[0])[1]["role"] == "standby"  # it stopped leading by its own clock
        proxy.heal()
        wait_for(lambda: any(health(port)[1].get("role") == "leader" for port in ports), timeout=30)
        wait_for(lambda: all(health(port)[0] == 200 for port in ports), timeout=30)
        for daemon in daemons:
            assert daemon.stop() == 0


def test_a_lone_leader_paused_past_its_lease_leads_again_when_it_wakes(
    tmp_path: Path, sim: BlandSimulator, rx: Receiver, store_url: str
) -> None:
    """Nobody took over while it slept: it must not stay a standby for good. (Whether it
    steps down first depends on where the pause caught it: a renewal already on its way
    lands after the pause and keeps the term, which is sound, since nobody else took it.)"""
    configure(tmp_path, sim, rx, store_url)
    sim.set_calls([wire_call("a")])
    daemon = start(tmp_path, sim)
    wait_for(lambda: rx.received)
    daemon.proc.send_signal(signal.SIGSTOP)
    time.sleep(LEASE * 2)
    daemon.proc.send_signal(signal.SIGCONT)
    sim.set_calls([wire_call("a"), wire_call("b")])
    wait_for(lambda: any(r.json["data"]["call"]["call_id"] == "b" for r in rx.received), timeout=LEASE * 3)
    assert leader_pid(store_url) == daemon.pid
    assert daemon.stop() == 0


def test_once_keeps_its_lease_through_a_long_pass(tmp_path: Path, sim: BlandSimulator, rx: Receiver) -> None:
    configure(tmp_path, sim, rx, f"sqlite:///{tmp_path}/notifier.db")
    path = tmp_path / "notifier.toml"
    path.write_text(path.read_text().replace("[targets.crm]\n", '[targets.crm]\nmin_interval = "1s"\n'))
    sim.set_calls([wire_call(f"c{i}") for i in range(4)])  # 4 sends, 1 s apart: longer than the 2 s lease
    result = run_cli(["once"], cli_env(sim, tmp_path), tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(rx.received) == 4 and "Traceback" not in result.stderr


def test_several_sources_commit_side_by_side_on_postgresql(tmp_path: Path, rx: Receiver, postgres_url: str) -> None:
    from tests.test_sources import source

    sims = [BlandSimulator(seed=i) for i in range(3)]
    try:
        for s in sims:
            s.start()
        text = "".join(source(f"s{i}", s, f"KEY_{i}") for i, s in enumerate(sims))
        (tmp_path / "notifier.toml").write_text(
            text
            + f'[storage]\nurl = "{postgres_url}"\n[detect]\nannounce_existing = true\n'
            + f'[targets.crm]\nurl = "{rx.url}"\n'
            + '[[rules]]\nname = "all"\nevents = ["call.appeared"]\ntargets = ["crm"]\n'
        )
        env = cli_env(None, tmp_path, **{f"KEY_{i}": s.api_key for i, s in enumerate(sims)})
        daemon = DaemonProcess(tmp_path, env)
        wait_for(lambda: all(s.requests for s in sims), timeout=60)  # started (slow on a loaded machine)
        for round_ in range(15):  # every source has new calls at every poll
            for i, s in enumerate(sims):
                s.set_calls([wire_call(f"{i}-{round_}-{k}") for k in range(5)])
            time.sleep(0.4)  # four polls a round: a loaded machine slows some down
        wait_for(lambda: len({r.headers["webhook-id"] for r in rx.received}) >= 3 * 5 * 10, timeout=30)
        assert daemon.stop() == 0
        assert "could not record the poll" not in daemon.log, daemon.log
    finally:
        for s in sims:
            s.stop()
