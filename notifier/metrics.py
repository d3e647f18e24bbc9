"""Prometheus metrics, on a registry of our own (no process-global state in tests).

Values that are cheap to read but costly to keep current on every poll (calls by
status, queue age) are computed when Prometheus scrapes, not in the poll loop.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from notifier.detect import DetectState

POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Live(Collector):
    """Gauges read from the daemon's current state at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = self.metrics.states()
        active = GaugeMetricFamily(
            "notifier_active_calls", "Active calls by status, as last seen.", labels=["source", "status"]
        )
        up = GaugeMetricFamily(
            "notifier_source_up", "1 unless the source's Bland API counts as unreachable.", labels=["source"]
        )
        for name, state in sorted(states.items()):
            counts = Tally(cs.call.status for cs in state.calls.values() if not cs.missing)
            for status in ("QUEUED", "IN_PROGRESS"):
                counts.setdefault(status, 0)
            for status, count in sorted(counts.items()):
                active.add_metric([name, status], count)
            up.add_metric([name], 0.0 if state.source.unreachable else 1.0)
        yield active
        yield up
        depth, oldest_created = self.metrics.queue()
        yield GaugeMetricFamily("notifier_delivery_queue_depth", "Deliveries waiting to be sent.", value=depth)
        age = max(0.0, self.metrics.clock() - oldest_created) if depth and oldest_created else 0.0
        yield GaugeMetricFamily(
            "notifier_oldest_pending_delivery_seconds", "Age of the oldest delivery still pending.", value=age
        )


class Metrics:
    """``states``: the sources this daemon polls (none on a standby), read at scrape time."""

    def __init__(
        self,
        states: Callable[[], Mapping[str, DetectState]] = dict,
        queue: Callable[[], tuple[int, float | None]] = lambda: (0, None),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry()
        self.states = states
        self.queue = queue  # (pending deliveries, created_at of the oldest), read at scrape time
        self.clock = clock
        r = self.registry
        self.polls = Counter("notifier_polls", "Polls of the Bland API by result.", ["source", "result"], registry=r)
        self.poll_duration = Histogram(
            "notifier_poll_duration_seconds",
            "Duration of a whole poll cycle.",
            ["source"],
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.events = Counter("notifier_events", "Events detected, by type.", ["type"], registry=r)
        self.deliveries = Counter(
            "notifier_deliveries",
            "Deliveries by target and result: attempts (sent, failed = will retry, dead) and quieted ones "
            "(silenced, muted, inhibited).",
            ["target", "result"],
            registry=r,
        )
        self.heartbeats = Counter(
            "notifier_heartbeats", "Heartbeat pings to the dead man's switch, by result.", ["result"], registry=r
        )
        self.skipped = Counter("notifier_skipped_entries", "Malformed API entries skipped.", ["source"], registry=r)
        self.last_success = Gauge(
            "notifier_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful poll.",
            ["source"],
            registry=r,
        )
        self.leader = Gauge("notifier_leader", "1 while this daemon holds the lease, else 0.", registry=r)
        self.leader_changes = Counter(
            "notifier_leader_changes", "Times this daemon became leader or stopped being one.", registry=r
        )
        self.store_errors = Counter(
            "notifier_store_errors", "Store operations that failed (locked, full, unreachable).", registry=r
        )
        r.register(_Live(self))

    def add_source(self, source: str) -> None:
        """Make a source's series visible (at 0) before its first poll."""
        for result in ("ok", "failed"):
            self.polls.labels(source, result)

    def observe_poll(
        self, source: str, ok: bool, duration: float, counts: Mapping[str, int], skipped: int, at: float
    ) -> None:
        """``counts``: the poll's events by type (hundreds of events, a handful of types)."""
        self.polls.labels(source, "ok" if ok else "failed").inc()
        self.poll_duration.labels(source).observe(duration)
        for type_, count in counts.items():
            self.events.labels(type_).inc(count)
        if skipped:
            self.skipped.labels(source).inc(skipped)
        if ok:
            self.last_success.labels(source).set(at)

    def observe_attempt(self, target: str, result: str, count: int = 1) -> None:
        """A delivery's outcome: sent, failed, dead, or silenced, muted, inhibited."""
        self.deliveries.labels(target, result).inc(count)
