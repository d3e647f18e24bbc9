"""``python -m benchmarks [--quick] [--output BENCHMARKS.md]``: every figure in one run.

CPU times are process CPU seconds (``time.process_time``), reported as ratios to
``json.loads`` of the same body measured in the same run, because this machine is
shared and noisy: absolute milliseconds drift, ratios much less so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import Column, MetaData, String, Table, Text, create_engine
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from benchmarks.bodies import OBJECTIVE, Campaign
from benchmarks.server import API_KEY, ORG_ID, BenchServer, Receiver
from notifier.bland import ActiveCallsDecoder, BlandClient
from notifier.config import load_config
from notifier.daemon import tune_gc
from notifier.detect import DetectSettings, DetectState, detect
from notifier.outbox import Dispatcher
from notifier.route import compile_rule, plan_deliveries
from notifier.secret import Secret
from notifier.store import PollRecord, Store

STAGES = ("decode", "detect", "route", "persist")
RULES = (compile_rule(name="crm", events=["call.*"], match=[], targets=["crm"]),)
# Stuck detection on, with a threshold the simulated minutes of a run do not reach
# (the bodies' creation times are fixed, so a short one would flag every call at once).
SETTINGS = DetectSettings(stuck_queued_after=3600, long_running_after=0)


def cpu(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "stdev": statistics.pstdev(values),
    }


class Pipeline:
    """The daemon's poll cycle minus the network: decode, detect, route, persist."""

    def __init__(self, directory: str, url: str = "sqlite:///bench.db") -> None:
        tune_gc()  # as the daemon runs
        self.store = Store(url, {"STATE_DIRECTORY": directory})
        self.store.upgrade()
        self.state: DetectState = self.store.load_state()
        self.decoder = ActiveCallsDecoder()
        self.now = 1_800_000_000.0

    def poll(self, body: bytes) -> dict[str, float]:
        """One poll; returns the CPU time of each stage."""
        start = time.process_time()
        snapshot = self.decoder.decode(body)
        return {"decode": time.process_time() - start, **self.commit(snapshot)}

    def checkpoint(self) -> None:
        """What the daemon does on a timer, off the poll path (measured separately)."""
        self.store.checkpoint()

    def commit(self, snapshot: Any) -> dict[str, float]:
        """Detect, route and persist one snapshot; returns the CPU time of each stage."""
        marks = [time.process_time()]
        self.now += 5
        transition = detect(self.state, snapshot, self.now, SETTINGS)
        marks.append(time.process_time())
        planned = plan_deliveries(transition.events, RULES, frozenset())
        marks.append(time.process_time())
        self.store.commit_poll(transition, planned, PollRecord(self.now, 0.0, True, len(snapshot.calls)))
        marks.append(time.process_time())
        self.state = transition.state
        return {stage: end - start for stage, start, end in zip(STAGES[1:], marks, marks[1:], strict=False)}


class Naive:
    """The straightforward way: json.loads, compare dicts, upsert every row every poll."""

    def __init__(self, directory: str) -> None:
        self.engine = create_engine(f"sqlite:///{directory}/naive.db")
        meta = MetaData()
        self.table = Table("calls", meta, Column("call_id", String, primary_key=True), Column("data", Text))
        meta.create_all(self.engine)
        self.previous: dict[str, dict[str, str]] = {}

    def poll(self, body: bytes) -> None:
        calls = {c["call_id"]: c for c in json.loads(body)["data"]}
        _changed = [cid for cid, c in calls.items() if self.previous.get(cid) != c]
        stmt = sqlite_insert(self.table)
        with self.engine.begin() as conn:
            conn.execute(
                stmt.on_conflict_do_update(index_elements=["call_id"], set_={"data": stmt.excluded.data}),
                [{"call_id": cid, "data": json.dumps(c)} for cid, c in calls.items()],
            )
        self.previous = calls


def campaign_bodies(size: int, count: int) -> list[bytes]:
    """``count`` successive answers of one campaign of ``size`` calls."""
    campaign = Campaign(size)
    bodies = []
    for _ in range(count):
        bodies.append(campaign.body())
        campaign.step()
    return bodies


def bench_cycle(size: int, polls: int, steady_polls: int) -> dict[str, Any]:
    bodies = campaign_bodies(size, polls + 1)
    with tempfile.TemporaryDirectory() as directory:
        pipeline, naive = Pipeline(directory), Naive(directory)
        pipeline.poll(bodies[0])  # the first poll builds the baseline; not what a daemon pays each time
        naive.poll(bodies[0])
        loads, cycle, naive_cycle, checkpoints = [], [], [], []
        stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for index, body in enumerate(bodies[1:]):
            loads.append(cpu(lambda: json.loads(body)))  # noqa: B023
            timed = pipeline.poll(body)
            cycle.append(sum(timed.values()))
            for stage, spent in timed.items():
                stages[stage].append(spent)
            naive_cycle.append(cpu(lambda: naive.poll(body)))  # noqa: B023
            if index % 2:  # the daemon checkpoints every 10 s: every 2nd poll at 5 s
                checkpoints.append(cpu(pipeline.checkpoint))
        steady_body = bodies[-1]
        pipeline.poll(steady_body)
        steady, steady_loads = [], []
        for _ in range(steady_polls):
            steady_loads.append(cpu(lambda: json.loads(steady_body)))
            steady.append(sum(pipeline.poll(steady_body).values()))
        pipeline.store.close()
    base = statistics.fmean(loads)
    return {
        "size": size,
        "bytes_per_call": len(bodies[0]) / size,
        "loads": summary(loads),
        "cycle": summary(cycle),
        "steady": summary(steady),
        "naive": summary(naive_cycle),
        "ratio_mean": statistics.fmean(cycle) / base,
        "stages": {stage: statistics.fmean(spent) / base for stage, spent in stages.items()},
        "ratio_p95": summary(cycle)["p95"] / base,
        "steady_ratio": statistics.fmean(steady) / statistics.fmean(steady_loads),
        "naive_ratio": statistics.fmean(naive_cycle) / base,
        "checkpoint_ratio": sum(checkpoints) / len(cycle) / base,
    }


def bench_backends(size: int, polls: int, postgres_url: str) -> dict[str, Any]:
    """The same poll cycles on SQLite and on PostgreSQL (a local server), interleaved
    poll by poll so that both see the same machine."""
    bodies = campaign_bodies(size, polls + 1)
    with tempfile.TemporaryDirectory() as directory:
        pipelines = {"sqlite": Pipeline(directory), "postgresql": Pipeline(directory, postgres_url)}
        for pipeline in pipelines.values():
            pipeline.poll(bodies[0])
        loads: list[float] = []
        cycles: dict[str, list[float]] = {name: [] for name in pipelines}
        persist: dict[str, list[float]] = {name: [] for name in pipelines}
        for body in bodies[1:]:
            loads.append(cpu(lambda: json.loads(body)))  # noqa: B023
            for name, pipeline in pipelines.items():
                started = time.perf_counter()
                timed = pipeline.poll(body)
                cycles[name].append(time.perf_counter() - started)  # wall: the server's CPU counts too
                persist[name].append(timed["persist"])
        for pipeline in pipelines.values():
            pipeline.store.close()
    base = statistics.fmean(loads)
    return {
        "size": size,
        "wall_ratio": {name: statistics.fmean(values) / base for name, values in cycles.items()},
        "persist_cpu_ratio": {name: statistics.fmean(values) / base for name, values in persist.items()},
    }


def bench_conditions(size: int, polls: int) -> dict[str, Any]:
    """What campaign-health conditions add to a steady poll, against ``json.loads`` of
    the same body: counts follow what detection changed (nothing, here);
    ``oldest_queued_seconds`` is a pass over the calls."""
    from notifier.conditions import Condition, Delta, evaluate
    from notifier.model import ConditionState
    from notifier.route import parse_matcher

    body = Campaign(size).body()
    state = detect(DetectState("bench"), ActiveCallsDecoder().decode(body), time.time(), DetectSettings()).state
    setups = {
        "backlog per pathway": [Condition("backlog", "queued", 200, True, group_by=("pathway_id",))],
        "+ oldest queued": [
            Condition("backlog", "queued", 200, True, group_by=("pathway_id",)),
            Condition("old", "oldest_queued_seconds", 600, True),
        ],
        "+ a matcher": [Condition("intl", "active", 50, True, matchers=(parse_matcher('international = "true"'),))],
        "started per minute, per pathway": [
            Condition("stall", "started_per_minute", 1, False, group_by=("pathway_id",))
        ],
    }
    found: dict[str, float] = {}
    loads = [cpu(lambda: json.loads(body)) for _ in range(polls)]
    steady = Delta(state.calls, [], [])  # a steady poll: detection changed nothing
    for label, conditions in setups.items():
        conditions_state, _ = evaluate(conditions, ConditionState(), state.calls, [], time.time())  # the first count
        spent = []
        for _ in range(polls):
            now = time.time()
            spent.append(cpu(lambda: evaluate(conditions, conditions_state, state.calls, [], now, steady)))  # noqa: B023
        found[label] = statistics.fmean(spent) / statistics.fmean(loads)
    return {"size": size, "loads": summary(loads), "ratios": found}


def bench_console(size: int, refreshes: int) -> dict[str, Any]:
    """A console refresh (the whole page) and an API page of calls at ``size`` active
    calls, through the app in process: wall ms, and process CPU against ``json.loads``
    of the same Bland body (the page does not grow with the calls: it is paged)."""
    from litestar.testing import TestClient

    from notifier.listener import Standing
    from notifier.web import make_app
    from notifier.web.api import WebContext

    body = Campaign(size).body()
    loads = [cpu(lambda: json.loads(body)) for _ in range(refreshes)]
    found: dict[str, Any] = {"size": size}
    with tempfile.TemporaryDirectory() as directory:
        pipeline = Pipeline(directory)
        pipeline.commit(pipeline.decoder.decode(body))  # the first poll stores every call
        assert pipeline.store.active_calls(limit=1)[0] == size
        app = make_app(WebContext(pipeline.store, lambda: Standing("leader"), time.time))
        with TestClient(app) as client:
            for label, path in (("page", "/"), ("calls", "/api/v1/calls?status=QUEUED&limit=100")):
                assert client.get(path).status_code == 200  # warm
                walls, cpus = [], []
                for _ in range(refreshes):
                    start_wall, start_cpu = time.perf_counter(), time.process_time()
                    assert client.get(path).status_code == 200
                    walls.append(time.perf_counter() - start_wall)
                    cpus.append(time.process_time() - start_cpu)
                found[label] = {"wall": summary(walls), "ratio": statistics.fmean(cpus) / statistics.fmean(loads)}
        pipeline.store.close()
    return found


def store_history(path: Path, count: int) -> None:
    """``count`` older events, as a daemon that has run for a while keeps them (for the
    retention period, 30 days by default), each for a different call."""
    rng = random.Random(2)
    data = json.dumps({"call": {"objective": OBJECTIVE, "status": "QUEUED"}}).encode()
    with closing(sqlite3.connect(path)) as conn:
        with conn:  # one transaction
            conn.executemany(
                "INSERT INTO events (id, type, call_id, detected_at, data) VALUES (?, 'call.appeared', ?, ?, ?)",
                (
                    (f"evt_history_{index:010d}", f"{rng.getrandbits(128):032x}", index / 100, data)
                    for index in range(count)
                ),
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def bench_history(size: int, history: int, polls: int) -> dict[str, Any]:
    """Persistence once the store holds ``history`` older events, against a new store,
    poll by poll on the same bodies. Each new event's entry in the ``call_id`` index
    (what ``events --call-id`` reads) lands on a random page of that index, so the
    pages a poll writes grow with the history until there are more index pages than
    events a poll."""
    bodies = campaign_bodies(size, polls + 1)
    with tempfile.TemporaryDirectory() as fresh_dir, tempfile.TemporaryDirectory() as old_dir:
        fresh, old = Pipeline(fresh_dir), Pipeline(old_dir)
        store_history(old.store.path, history)
        loads: list[float] = []
        persist: dict[int, list[float]] = {0: [], history: []}
        for index, body in enumerate(bodies):
            loads.append(cpu(lambda: json.loads(body)))  # noqa: B023
            for pipeline, stored in ((fresh, 0), (old, history)):
                spent = pipeline.poll(body)["persist"]
                if index:  # the first poll builds the baseline
                    persist[stored].append(spent)
                if index % 2:
                    pipeline.checkpoint()
        fresh.store.close()
        old.store.close()
    base = statistics.fmean(loads)
    return {"size": size, "persist": {stored: statistics.fmean(spent) / base for stored, spent in persist.items()}}


def bench_http(size: int, polls: int) -> dict[str, Any]:
    """The same cycle through the real client against a loopback server in another process."""
    server = BenchServer(size)
    try:
        with tempfile.TemporaryDirectory() as directory:
            pipeline = Pipeline(directory)

            async def main() -> tuple[list[float], list[float]]:
                body = Campaign(size).body()
                async with BlandClient(server.base_url, Secret(API_KEY), Secret(ORG_ID), 60) as client:
                    await client.fetch_active(pipeline.commit)
                    cycles, loads = [], []
                    for _ in range(polls):
                        loads.append(cpu(lambda: json.loads(body)))  # between the polls, as for the cycle
                        start = time.process_time()
                        await client.fetch_active(pipeline.commit)  # in the fetching thread, as the daemon does
                        cycles.append(time.process_time() - start)
                    return cycles, loads

            cycles, loads = anyio.run(main)
            pipeline.store.close()
    finally:
        server.stop()
    return {"size": size, "cycle": summary(cycles), "ratio_mean": statistics.fmean(cycles) / statistics.fmean(loads)}


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Daemon:
    """``notifier run`` as a subprocess against benchmark servers: one ``[source]``, or
    one ``[[sources]]`` per URL when given a list."""

    def __init__(self, directory: str, base_url: str | list[str], interval: str, extra: str = "") -> None:
        self.directory = directory
        keys = f'api_key = "{API_KEY}"\norg_id = "{ORG_ID}"\npoll_interval = "{interval}"\ntimeout = "30s"\n'
        if isinstance(base_url, str):
            sources = f'[source]\nbase_url = "{base_url}"\n{keys}'
        else:
            sources = "".join(
                f'[[sources]]\nname = "org-{n}"\nbase_url = "{url}"\n{keys}' for n, url in enumerate(base_url)
            )
        Path(directory, "notifier.toml").write_text(sources + '[storage]\nurl = "sqlite:///notifier.db"\n' + extra)
        env = {**os.environ, "STATE_DIRECTORY": directory, "NOTIFIER_LOG_LEVEL": "info"}  # the default, as users run it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "notifier", "run"],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def polls(self) -> int:
        import sqlite3

        try:
            with sqlite3.connect(f"file:{self.directory}/notifier.db?mode=ro", uri=True) as conn:
                return conn.execute("SELECT count(*) FROM polls WHERE ok").fetchone()[0]
        except sqlite3.Error:
            return 0

    def wait_polls(self, count: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.polls() < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("daemon did not poll as expected")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def bench_daemon_cpu(size: int, polls: int, steady: bool = False) -> dict[str, Any]:
    """The daemon's own CPU per poll, against ``json.loads`` of the same size timed in
    this process while the daemon runs (this machine's speed drifts from one minute to
    the next, so the two are measured in the same seconds). ``steady``: the same calls
    in every answer, as between a campaign's bursts; else 1 % churn a poll."""
    body = Campaign(size).body()
    loads: list[float] = []
    server = BenchServer(size, steady=steady)
    try:
        with tempfile.TemporaryDirectory() as directory:
            daemon = Daemon(directory, server.base_url, "200ms")
            daemon.wait_polls(3)
            start_cpu, start_polls = _proc_cpu(daemon.proc.pid), daemon.polls()
            while daemon.polls() < start_polls + polls:
                if daemon.proc.poll() is not None:
                    raise RuntimeError("daemon exited")
                loads.append(cpu(lambda: json.loads(body)))
                time.sleep(0.2)
            used, done = _proc_cpu(daemon.proc.pid) - start_cpu, daemon.polls() - start_polls
            hwm = _proc_hwm_mb(daemon.proc.pid)
            daemon.stop()
    finally:
        server.stop()
    per_poll = used / done
    loads_mean = statistics.fmean(loads)
    return {
        "size": size,
        "cpu_per_poll": per_poll,
        "loads": loads_mean,
        "ratio": per_poll / loads_mean,
        "peak_rss_mb": hwm,
    }


def bench_many_sources(sources: int, size: int, rounds: int) -> dict[str, Any]:
    """One daemon polling ``sources`` organisations of ``size`` calls each (1 % churn a
    poll, each its own API process with its answers made in advance), against the same
    daemon polling one of them: CPU per round of polls (every source polled once) over
    CPU per poll of the one, each also against ``json.loads`` timed in the same seconds."""
    body = Campaign(size).body()

    def cpu_per_round(servers: list[BenchServer]) -> tuple[float, float]:
        loads: list[float] = []
        with tempfile.TemporaryDirectory() as directory:
            urls = [server.base_url for server in servers]
            daemon = Daemon(directory, urls if len(urls) > 1 else urls[0], "1s")
            daemon.wait_polls(2 * len(urls))
            start_cpu, start_polls = _proc_cpu(daemon.proc.pid), daemon.polls()
            while daemon.polls() < start_polls + rounds * len(urls):
                if daemon.proc.poll() is not None:
                    raise RuntimeError("daemon exited")
                loads.append(cpu(lambda: json.loads(body)))
                time.sleep(0.2)
            used, done = _proc_cpu(daemon.proc.pid) - start_cpu, daemon.polls() - start_polls
            daemon.stop()
        return used / (done / len(urls)), statistics.fmean(loads)

    ahead = 2 * rounds + 10  # the polls before and during the measurement, and some to spare
    servers = [BenchServer(size, ahead=ahead) for _ in range(sources)]
    try:
        (one, one_loads), (many, many_loads) = cpu_per_round(servers[:1]), cpu_per_round(servers)
    finally:
        for server in servers:
            server.stop()
    return {
        "sources": sources,
        "size": size,
        "one": one,
        "round": many,
        "ratio": many / one,
        "loads_ratio": (many / many_loads) / (one / one_loads),
    }


def bench_idle(size: int, seconds: float) -> dict[str, Any]:
    server = BenchServer(size, steady=True)
    try:
        with tempfile.TemporaryDirectory() as directory:
            daemon = Daemon(directory, server.base_url, "5s")
            daemon.wait_polls(2)
            start = _proc_cpu(daemon.proc.pid)
            time.sleep(seconds)
            used = _proc_cpu(daemon.proc.pid) - start
            daemon.stop()
    finally:
        server.stop()
    return {"size": size, "seconds": seconds, "core_share": used / seconds}


def bench_delivery(count: int) -> dict[str, Any]:
    receiver = Receiver()
    try:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory, "notifier.toml")
            path.write_text(
                f'[source]\napi_key = "k"\norg_id = "o"\n[storage]\nurl = "sqlite:///{directory}/d.db"\n'
                f'[targets.crm]\nurl = "{receiver.url}"\nsecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n'
                '[[rules]]\nname = "all"\nevents = ["call.*"]\ntargets = ["crm"]\n'
            )
            config = load_config(path, {})
            store = Store(config.storage.url)
            store.upgrade()
            state = store.load_state()
            calls = Campaign(count).body()
            snapshot = ActiveCallsDecoder().decode(calls)
            now = time.time()
            t = detect(state, snapshot, now, DetectSettings(announce_existing=True, stuck_queued_after=0))
            events = [e for e in t.events if e.type == "call.appeared"]
            store.commit_poll(t, plan_deliveries(events, config.rules, config.digestible), PollRecord(now, 0, True))
            dispatcher = Dispatcher(store, config)
            start = time.perf_counter()

            async def main() -> None:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(dispatcher.run)
                    while receiver.count < count:
                        await anyio.sleep(0.01)
                    tg.cancel_scope.cancel()

            anyio.run(main)
            elapsed = time.perf_counter() - start
            store.close()
    finally:
        receiver.stop()
    return {"count": count, "seconds": elapsed, "per_second": count / elapsed}


def bench_latency(samples: int, interval: float) -> dict[str, Any]:
    receiver = Receiver()
    server = BenchServer(1000, steady=True)
    try:
        with tempfile.TemporaryDirectory() as directory:
            daemon = Daemon(
                directory,
                server.base_url,
                f"{int(interval * 1000)}ms",
                f'[targets.crm]\nurl = "{receiver.url}"\n'
                '[[rules]]\nname = "new"\nevents = ["call.appeared"]\ntargets = ["crm"]\n',
            )
            daemon.wait_polls(2)
            latencies = []
            for index in range(samples):
                time.sleep(0.05 + (index * 0.618 % 1) * interval)  # spread over the poll phase
                call_id = f"latency-{index}"
                server.add_call(call_id)
                injected = time.monotonic()
                while call_id not in receiver.arrivals:
                    time.sleep(0.002)
                latencies.append(receiver.arrivals[call_id] - injected)
            daemon.stop()
    finally:
        server.stop()
        receiver.stop()
    ordered = sorted(latencies)
    return {
        "interval": interval,
        "p50": statistics.median(latencies),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "samples": samples,
    }


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return (
        f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"One run of `python -m benchmarks` on {results['machine']}, {results['date']}.",
        "CPU figures are process CPU time; ratios are against `json.loads` of the same body in the same run.",
        "Bodies: Bland-like entries with a ~300-character objective; each poll 1 % of calls arrive, 1 % leave and "
        "1 % go QUEUED -> IN_PROGRESS.",
        "",
        "## Poll cycle (decode + detect + route + persist, no network)",
        "",
        "| calls | bytes/call | json.loads ms (mean) | cycle ms mean / median / p95 (stdev) "
        "| cycle / json.loads (mean) | p95 / json.loads mean | steady state / json.loads "
        "| WAL checkpoint per poll (off the poll path) / json.loads | naive / json.loads |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["cycle"]:
        c = r["cycle"]
        lines.append(
            f"| {r['size']:,} | {r['bytes_per_call']:.0f} | {ms(r['loads']['mean'])} | "
            f"{ms(c['mean'])} / {ms(c['median'])} / {ms(c['p95'])} ({ms(c['stdev'])}) | **{r['ratio_mean']:.2f}x** | "
            f"{r['ratio_p95']:.2f}x | {r['steady_ratio']:.2f}x | {r['checkpoint_ratio']:.2f}x | "
            f"{r['naive_ratio']:.2f}x |"
        )
    lines += [
        "",
        "## Where a poll's time goes (1 % churn; mean CPU per stage / json.loads)",
        "",
        "| calls | " + " | ".join(STAGES) + " |",
        "|---|" + "---|" * len(STAGES),
    ]
    for r in results["cycle"]:
        lines.append(f"| {r['size']:,} | " + " | ".join(f"{r['stages'][stage]:.2f}x" for stage in STAGES) + " |")
    if "history" in results:
        h = results["history"]
        lines += [
            "",
            f"## Persistence as events accumulate ({h['size']:,} calls, 1 % churn; mean CPU / json.loads)",
            "",
            "| events already stored | persist |",
            "|---|---|",
        ]
        lines += [f"| {stored:,} | {ratio:.2f}x |" for stored, ratio in h["persist"].items()]
    lines += [
        "",
        "## Through the real HTTP client (loopback server in another process)",
        "",
        "| calls | client CPU ms per poll mean / p95 | / json.loads |",
        "|---|---|---|",
    ]
    for r in results["http"]:
        lines.append(f"| {r['size']:,} | {ms(r['cycle']['mean'])} / {ms(r['cycle']['p95'])} | {r['ratio_mean']:.2f}x |")
    c = results["conditions"]
    lines += [
        "",
        f"## Conditions over a steady snapshot ({c['size']:,} calls; mean CPU per poll / json.loads)",
        "",
        "| conditions | / json.loads |",
        "|---|---|",
        *(f"| {label} | {ratio:.3f}x |" for label, ratio in c["ratios"].items()),
    ]
    lines += [
        "",
        "## The console and the API (in process, paged; wall ms median / p95; CPU / json.loads of the Bland body)",
        "",
        "| active calls | console page refresh | / json.loads | API page of 100 queued calls | / json.loads |",
        "|---|---|---|---|---|",
        *(
            f"| {r['size']:,} | {ms(r['page']['wall']['median'])} / {ms(r['page']['wall']['p95'])} | "
            f"{r['page']['ratio']:.2f}x | {ms(r['calls']['wall']['median'])} / {ms(r['calls']['wall']['p95'])} | "
            f"{r['calls']['ratio']:.2f}x |"
            for r in results["console"]
        ),
    ]
    if "daemon" in results:
        d, idle, dl, lat = results["daemon"], results["idle"], results["delivery"], results["latency"]
        rss = results.get("rss")
        lines += [
            "",
            "## The daemon as a process",
            "",
            "| figure | measured | target |",
            "|---|---|---|",
            f"| whole-process CPU per poll at {d['size']:,} calls (HTTP included) | {ms(d['cpu_per_poll'])} ms = "
            f"**{d['ratio']:.2f}x** json.loads ({ms(d['loads'])} ms, timed during the run); median of 3 runs: "
            + ", ".join(f"{ratio:.2f}x" for ratio in d["ratios"])
            + " | <= 1.2x |",
            *(
                [
                    f"| whole-process CPU per poll at {s['size']:,} calls, steady state (nothing changes) | "
                    f"{ms(s['cpu_per_poll'])} ms = **{s['ratio']:.2f}x** json.loads | <= 0.5x (issue 17) |"
                ]
                if (s := results.get("daemon_steady"))
                else []
            ),
            *(
                [
                    f"| {m['sources']} sources x {m['size']:,} calls in one daemon (1 s interval, 1 % churn): CPU per "
                    f"round of polls / one source's per poll | {ms(m['round'])} ms / {ms(m['one'])} ms = "
                    f"**{m['ratio']:.2f}x**; against json.loads timed in the same seconds: {m['loads_ratio']:.2f}x "
                    "| <= 10x (issue 17) |"
                ]
                if (m := results.get("many_sources"))
                else []
            ),
            f"| peak RSS at {rss['size']:,} calls | **{rss['peak_rss_mb']:.0f} MB** | < 200 MB (issue 17) |"
            if rss
            else "",
            f"| {dl['count']:,} webhooks to a loopback receiver | **{dl['seconds']:.2f} s** "
            f"({dl['per_second']:.0f}/s) | < 5 s |",
            f"| detection -> webhook received at a {lat['interval'] * 1000:.0f} ms interval | p50 {ms(lat['p50'])} ms, "
            f"**p99 {ms(lat['p99'])} ms** ({lat['samples']} samples) | p99 <= {ms(lat['interval'] + 0.15)} ms |",
            f"| idle CPU, {idle['size']:,} steady calls, 5 s interval, {idle['seconds']:.0f} s | "
            f"**{idle['core_share'] * 100:.2f} %** of a core | < 1 % |",
        ]
        lines += ["", "## The targets of issue 17", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {goal} | {measured} | {'yes' if met else '**no**'} |" for goal, measured, met in targets(results)]
    if "backends" in results:
        b = results["backends"]
        lines += [
            "",
            f"## Several daemons, one store: the backends ({b['size']:,} calls, 1 % churn)",
            "",
            "| store | poll cycle, wall time / json.loads | persist, this process's CPU / json.loads |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | **{b['wall_ratio'][name]:.2f}x** | {b['persist_cpu_ratio'][name]:.2f}x |"
            for name in ("sqlite", "postgresql")
        ]
        lines += [
            "",
            f"PostgreSQL / SQLite, poll cycle: **{b['wall_ratio']['postgresql'] / b['wall_ratio']['sqlite']:.2f}x** "
            "(wall time, since the server's own work is in another process; the server is on this machine).",
        ]
    if "failover" in results:
        lines += [
            "",
            "## Failover (two daemons, lease 2 s, poll interval 200 ms)",
            "",
            "| store | how the leader is lost | rounds | to the successor's first poll: median / max | SPEC bound |",
            "|---|---|---|---|---|",
        ]
        what = {
            "kill": "SIGKILL (same host: the dead pid is seen)",
            "stop": "SIGSTOP (a lost host: the lease runs out)",
            "term": "SIGTERM (the lease is given up)",
        }
        for store, runs in results["failover"].items():
            for f in runs:
                lines.append(
                    f"| {store} | {what[f['how']]} | {f['rounds']} | {f['median']:.2f} s / **{f['max']:.2f} s** "
                    f"| {f['bound']:.1f} s |"
                )
    lines += ["", READING]
    return "\n".join(line for line in lines if line != "").replace("\n## ", "\n\n## ").replace("|\n\n|", "|\n|") + "\n"


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each figure issue 17 sets a target for."""
    cycle = {r["size"]: r["ratio_mean"] for r in results["cycle"]}
    d, steady, rss, many = (results[key] for key in ("daemon", "daemon_steady", "rss", "many_sources"))
    rows = [
        ("whole process, steady state, 10,000 calls <= 0.5x", f"{steady['ratio']:.2f}x", steady["ratio"] <= 0.5),
        ("whole process, 1 % churn, 10,000 calls <= 1.0x (median of 3)", f"{d['ratio']:.2f}x", d["ratio"] <= 1.0),
        ("in-process cycle, 1 % churn, 10,000 calls <= 0.8x", f"{cycle[10_000]:.2f}x", cycle[10_000] <= 0.8),
        ("in-process cycle, 1 % churn, 100,000 calls <= 0.6x", f"{cycle[100_000]:.2f}x", cycle[100_000] <= 0.6),
        ("peak RSS at 100,000 calls < 200 MB", f"{rss['peak_rss_mb']:.0f} MB", rss["peak_rss_mb"] < 200),
        (
            f"{many['sources']} sources x {many['size']:,} calls: CPU per round <= 10x one source's",
            f"{many['ratio']:.2f}x ({many['loads_ratio']:.2f}x against json.loads in the same seconds)",
            many["ratio"] <= 10,
        ),
    ]
    if "backends" in results:
        wall = results["backends"]["wall_ratio"]
        pg = wall["postgresql"] / wall["sqlite"]
        rows.append(("PostgreSQL cycle at 1 % churn <= 1.5x the SQLite figure", f"{pg:.2f}x", pg <= 1.5))
    return rows


READING = """## Reading these figures

* **Decoding**: an answer byte-for-byte the last one (its CRC-32 and length, computed
  over the received buffer without a copy) is the last snapshot again; that is the steady
  state, and every 100th such answer is decoded whole anyway. Otherwise msgspec splits the
  list into raw entries, each entry is fingerprinted (a 64-bit hash of its bytes), and only
  new or changed entries are decoded; an unchanged call is the very object of the previous
  poll. Splitting and hashing the body is most of a poll with changes.
* **Several sources**: after the first polls of a term, each source keeps its own place in
  the interval (source i of n at i/n of it), so their fetches and commits do not all
  contend at once. Each source runs against its own API process whose answers are made
  before the measurement; the machine still slows as ten processes share two cores, which
  the ratio against `json.loads` timed in the same seconds takes out.
* **Detection**: an unchanged call is skipped after one identity check and one comparison
  with its precomputed next-timer time; the rest is building ~300 events a poll (at 10k
  calls) with their call payloads.
* **Persistence**: ~300 events with their call payloads, ~300 outbox rows and ~300
  call-row changes a poll (at 10k calls), in one transaction that is fsynced before
  anything is sent (a poll without events is not fsynced). This durable event log and
  outbox, which the issue's reference cycle did not write, are why the 10k cycle stays
  above 0.8x: decoding and persisting alone are about 0.85x. At 100k calls `json.loads`
  grows faster than linearly and the cycle does not. The console's index on the calls
  (source, status, queued_at: the oldest queued first, and the counts by status) is
  written with each call-row change; it added about 0.09x to persist at 10k calls.
* **The console** reads one page (25 calls, 25 events, 25 deliveries) and the counts by
  status from that index, so a refresh grows far slower than the number of calls.
* **History**: each new event's entry in the `call_id` index (what `events --call-id`
  reads) lands on a random page of that index, so once the index has more pages than a
  poll has events, every event dirties one page more. At very high churn a shorter
  `storage.retention` keeps this down.
* **WAL checkpoints** run on a 10 s timer, off the poll path; their cost is shown
  separately.
* **The HTTP client** reads with blocking reads in a worker thread, which also decodes and
  detects. The loopback server builds every answer on the same two cores, which costs the
  daemon cache misses that a remote API would not.
* **The daemon as a process** runs at the default log level (info: one line per poll with
  events, one per delivery batch) and polls every 200 ms; its CPU comes from `/proc` over
  25 polls, and `json.loads` is timed in the benchmark process during those same seconds.
* **Noise**: this is a shared 2-core VM; `json.loads` of the same 6 MB body takes between
  18 and 35 ms from one minute to the next. Between runs the cycle ratios move by about
  0.05, the whole-process ratio by about 0.2, the webhook burst between 1.8 s and 4.6 s,
  and the latency p99 between 250 ms and 354 ms."""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="small N only, no daemon runs (a smoke test)")
    parser.add_argument("--output", default=None, help="write the Markdown report here (e.g. BENCHMARKS.md)")
    parser.add_argument(
        "--no-postgres", action="store_true", help="skip the PostgreSQL rows (they start a throwaway local server)"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    sizes = [(1000, 5, 3)] if args.quick else [(1000, 30, 15), (10_000, 20, 10), (100_000, 8, 4)]
    results["cycle"] = []
    for size, polls, steady in sizes:
        print(f"cycle at {size:,} calls...", file=sys.stderr, flush=True)
        results["cycle"].append(bench_cycle(size, polls, steady))
    print("persistence with a history of events...", file=sys.stderr, flush=True)
    results["history"] = bench_history(1000, 20_000, 5) if args.quick else bench_history(10_000, 300_000, 20)
    results["http"] = [bench_http(1000 if args.quick else 10_000, 3 if args.quick else 15)]
    print("conditions over the snapshot...", file=sys.stderr, flush=True)
    results["conditions"] = bench_conditions(1000 if args.quick else 10_000, 5 if args.quick else 20)
    print("console refreshes...", file=sys.stderr, flush=True)
    results["console"] = [bench_console(n, 5) for n in ((1000,) if args.quick else (10_000, 100_000))]
    if not args.quick:
        print("daemon CPU per poll...", file=sys.stderr, flush=True)
        runs = sorted((bench_daemon_cpu(10_000, 25) for _ in range(3)), key=lambda run: run["ratio"])
        results["daemon"] = {**runs[1], "ratios": [run["ratio"] for run in runs]}  # the median of three
        print("daemon CPU per poll, steady state...", file=sys.stderr, flush=True)
        results["daemon_steady"] = bench_daemon_cpu(10_000, 25, steady=True)
        print("ten sources in one daemon...", file=sys.stderr, flush=True)
        results["many_sources"] = bench_many_sources(10, 10_000, 8)
        print("peak RSS at 100k...", file=sys.stderr, flush=True)
        results["rss"] = bench_daemon_cpu(100_000, 4)
        print("delivery throughput...", file=sys.stderr, flush=True)
        results["delivery"] = bench_delivery(1000)
        print("detection latency...", file=sys.stderr, flush=True)
        results["latency"] = bench_latency(100, 0.25)
        print("idle CPU (60 s)...", file=sys.stderr, flush=True)
        results["idle"] = bench_idle(1000, 60)
    if not args.no_postgres:
        from benchmarks.failover import bench_failover
        from tests.postgres import PostgresCluster

        with PostgresCluster() as cluster:
            print("PostgreSQL beside SQLite...", file=sys.stderr, flush=True)
            size, polls = (1000, 5) if args.quick else (10_000, 20)
            results["backends"] = bench_backends(size, polls, cluster.create_database("bench"))
            rounds = 2 if args.quick else 10
            results["failover"] = {}
            for store, url in (("sqlite", None), ("postgresql", None)):
                print(f"failover on {store}...", file=sys.stderr, flush=True)
                runs = []
                for how in ("kill", "stop", "term"):
                    db = cluster.create_database(f"failover_{how}") if store == "postgresql" else url
                    runs.append(bench_failover(db, rounds, how))
                results["failover"][store] = runs
    text = report(results)
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
