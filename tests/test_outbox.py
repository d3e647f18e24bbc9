"""The outbox: signed webhooks to real receivers, retries, dead rows, isolation, digests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from notifier.config import Config, load_config
from notifier.detect import DetectSettings, detect
from notifier.model import Call, Snapshot
from notifier.outbox import Dispatcher, backoff, send_test
from notifier.route import plan_deliveries
from notifier.store import PollRecord, Store
from tests.conftest import run_cli
from tests.receivers import Receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


STORE_URL = ""  # each test runs on both backends (``_on_each_backend``)


@pytest.fixture(autouse=True)
def _on_each_backend(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "STORE_URL", store_url)


def make_config(tmp_path: Path, targets: str, rules: str) -> Config:
    path = tmp_path / "notifier.toml"
    path.write_text(f'[source]\napi_key = "k"\norg_id = "o"\n[storage]\nurl = "{STORE_URL}"\n' + targets + rules)
    return load_config(path, {})


def webhook_config(tmp_path: Path, url: str, extra: str = "", rule_extra: str = "") -> Config:
    return make_config(
        tmp_path,
        f'[targets.crm]\nurl = "{url}"\nsecret = "{SECRET}"\nretry_initial = "5s"\nretry_max = "10m"\n{extra}',
        f'[[rules]]\nname = "all"\nevents = ["*"]\ntargets = ["crm"]\n{rule_extra}',
    )


def seed(config: Config, count: int, now: float | None = None, prefix: str = "c") -> tuple[Store, list[str]]:
    """Commit one poll in which ``count`` calls appear (and the deliveries they cause)."""
    now = time.time() if now is None else now
    store = Store(config.storage.url)
    store.upgrade()
    state = store.load_state()
    calls = {
        f"{prefix}{i}": Call(
            call_id=f"{prefix}{i}", status="QUEUED", to=f"+1310555{i:04d}", objective="<!channel> call me"
        )
        for i in range(count)
    }
    t = detect(state, Snapshot(calls=calls), now, DetectSettings(announce_existing=True))
    store.commit_poll(t, plan_deliveries(t.events, config.rules, config.digestible), PollRecord(now, 0.0, True))
    return store, [e.id for e in t.events]


def test_backoff_doubles_with_bounded_jitter() -> None:
    assert [backoff(n, 5, 600) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 320, 600]
    assert backoff(1, 5, 600, jitter=-1) >= 4.0 and backoff(1, 5, 600, jitter=1) <= 6.0
    assert backoff(50, 5, 600, jitter=1) == 600


def test_webhook_is_standard_webhooks_and_spec_shaped(tmp_path: Path) -> None:
    with Receiver(SECRET) as rx:
        config = webhook_config(tmp_path, rx.url)
        clock = Clock()
        rx.set_clock(clock.now)
        store, ids = seed(config, 1, T0)
        assert anyio.run(Dispatcher(store, config, clock).pass_once) == 1
        (got,) = rx.received
        assert got.verified is True, got.error
        assert got.headers["webhook-id"] == ids[0]
        assert got.headers["content-type"] == "application/json"
        assert got.headers["webhook-timestamp"] == str(int(T0))
        body = got.json
        assert body["type"] == "call.appeared"
        assert body["timestamp"] == "2027-01-15T08:00:00.000Z"
        assert body["data"]["id"] == ids[0]
        assert body["data"]["call"]["call_id"] == "c0" and body["data"]["call"]["to"] == "+13105550000"
        assert store.deliveries()[0].status == "sent"


def test_retry_after_five_minutes_is_signed_afresh_with_the_same_id(tmp_path: Path) -> None:
    clock = Clock()
    with Receiver(SECRET) as rx:
        rx.set_clock(clock.now)
        rx.respond(500, then=[500])
        config = webhook_config(tmp_path, rx.url)
        store, ids = seed(config, 1, T0)
        dispatcher = Dispatcher(store, config, clock)
        anyio.run(dispatcher.pass_once)
        (delivery,) = store.deliveries()
        assert delivery.status == "pending" and delivery.attempts == 1
        assert T0 + 4 <= delivery.next_attempt_at <= T0 + 6
        assert anyio.run(dispatcher.pass_once) == 0  # not due yet

        rx.respond(200)
        clock.now = T0 + 6 * 60
        rx.set_clock(clock.now)
        assert anyio.run(dispatcher.pass_once) == 1
        first, second = rx.received
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == ids[0]
        assert int(second.headers["webhook-timestamp"]) == int(T0 + 360)
        assert second.verified is True, second.error
        assert second.body == first.body
        attempts = store.attempts_of([delivery.id])[delivery.id]
        assert [(a.outcome, a.status_code) for a in attempts] == [("failed", 500), ("sent", 200)]
        assert all(a.latency > 0 for a in attempts)
    result = run_cli(["--config", str(config.path), "deliveries", "--json"], {"PATH": "/usr/bin"}, tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["status"] == "sent" and row["attempts"] == 2
    assert [(a["outcome"], a["status_code"]) for a in row["attempt_log"]] == [("failed", 500), ("sent", 200)]
    assert (
        row["attempt_log"][0]["at"] == "2027-01-15T08:00:00.000Z"
        and row["attempt_log"][0]["error"] == "HTTP 500 Internal Server Error"
    )


def test_gone_is_dead_at_once_and_redeliver_requeues(tmp_path: Path) -> None:
    with Receiver(SECRET) as rx:
        rx.respond(410)
        config = webhook_config(tmp_path, rx.url)
        store, ids = seed(config, 2)
        anyio.run(Dispatcher(store, config).pass_once)
        assert [d.status for d in store.deliveries()] == ["dead", "dead"]
        assert "410" in (store.deliveries()[0].last_error or "")
        rx.respond(200)
        assert store.redeliver(time.time(), event_id=ids[0]) == 1
        anyio.run(Dispatcher(store, config).pass_once)
        assert [d.status for d in store.deliveries()] == ["sent", "dead"]
        assert store.redeliver(time.time()) == 1
        anyio.run(Dispatcher(store, config).pass_once)
        assert [d.status for d in store.deliveries()] == ["sent", "sent"]
        assert [r.headers["webhook-id"] for r in rx.received] == [ids[0], ids[1], ids[0], ids[1]]


def test_gives_up_after_the_window(tmp_path: Path) -> None:
    clock = Clock()
    with Receiver(SECRET) as rx:
        rx.respond(503)
        config = webhook_config(tmp_path, rx.url, 'give_up_after = "1m"\n')
        store, _ = seed(config, 1, T0)
        dispatcher = Dispatcher(store, config, clock)
        for _ in range(10):
            anyio.run(dispatcher.pass_once)
            clock.now += 30
        (delivery,) = store.deliveries()
        assert delivery.status == "dead" and "gave up after" in (delivery.last_error or "")
        assert len(rx.received) == delivery.attempts >= 3


def test_retry_after_header_is_honoured(tmp_path: Path) -> None:
    clock = Clock()
    with Receiver(SECRET) as rx:
        rx.respond(429, headers={"retry-after": "120"})
        config = webhook_config(tmp_path, rx.url)
        store, _ = seed(config, 1, T0)
        anyio.run(Dispatcher(store, config, clock).pass_once)
        assert store.deliveries()[0].next_attempt_at >= T0 + 120


def test_redirects_are_not_followed(tmp_path: Path) -> None:
    with Receiver(SECRET) as rx:
        rx.respond(302, headers={"location": "http://127.0.0.1:1/elsewhere"})
        config = webhook_config(tmp_path, rx.url)
        store, _ = seed(config, 1)
        anyio.run(Dispatcher(store, config).pass_once)
        assert len(rx.received) == 1
        assert "redirects are not followed" in (store.deliveries()[0].last_error or "")


def test_event_order_and_backoff_does_not_block_later_rows(tmp_path: Path) -> None:
    with Receiver(SECRET) as rx:
        rx.respond(200, then=[500])  # the first request fails
        config = webhook_config(tmp_path, rx.url)
        store, ids = seed(config, 5)
        anyio.run(Dispatcher(store, config).pass_once)
        assert [r.headers["webhook-id"] for r in rx.received] == ids
        assert [d.status for d in store.deliveries()] == ["pending", "sent", "sent", "sent", "sent"]


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_timeout(tmp_path: Path) -> None:
    """Each read gets a byte within 50 ms, so no read times out: only the deadline on the
    whole exchange ends the attempt, which is then retried like any failure."""
    with Receiver(SECRET) as rx:
        rx.respond(200, trickle=30)
        config = webhook_config(tmp_path, rx.url, extra='timeout = "1s"\n')
        store, _ids = seed(config, 1)
        started = time.monotonic()
        anyio.run(Dispatcher(store, config).pass_once)
        assert time.monotonic() - started < 10  # the answer would have taken 30 s (a bound, not a speed check)
        (delivery,) = store.deliveries()
        assert delivery.status == "pending" and delivery.attempts == 1
        assert delivery.last_error is not None and "no complete answer" in delivery.last_error


def test_a_hanging_target_does_not_delay_another(tmp_path: Path) -> None:
    with Receiver() as slow, Receiver() as fast:
        slow.respond(200, hang=5)
        config = make_config(
            tmp_path,
            f'[targets.slow]\nurl = "{slow.url}"\ntimeout = "10s"\n[targets.fast]\nurl = "{fast.url}"\n',
            '[[rules]]\nname = "all"\nevents = ["*"]\ntargets = ["slow", "fast"]\n',
        )
        store, ids = seed(config, 20)
        dispatcher = Dispatcher(store, config)

        async def main() -> float:
            async with anyio.create_task_group() as tg:
                tg.start_soon(dispatcher.run)
                started = time.monotonic()
                while len(fast.received) < 20:
                    await anyio.sleep(0.02)
                elapsed = time.monotonic() - started
                tg.cancel_scope.cancel()
            return elapsed

        elapsed = anyio.run(main)
        assert elapsed < 5  # all 20 arrived while the slow target still hung on its first
        assert len(slow.received) == 1
        assert [r.headers["webhook-id"] for r in fast.received] == ids


def test_burst_of_1000_webhooks(tmp_path: Path) -> None:
    with Receiver(SECRET) as rx:
        config = webhook_config(tmp_path, rx.url)
        store, ids = seed(config, 1000)
        started = time.perf_counter()
        dispatcher = Dispatcher(store, config)
        while anyio.run(dispatcher.pass_once):
            pass
        elapsed = time.perf_counter() - started
        print(f"\n1000 webhooks delivered in {elapsed:.2f}s")
        assert sorted(r.headers["webhook-id"] for r in rx.received) == sorted(ids)
        assert all(r.verified for r in rx.received)


def test_digest_for_apprise_targets_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Receiver() as rx:
        config = make_config(
            tmp_path,
            f'[targets.console]\nurl = "console://"\nmin_interval = "0s"\n[targets.crm]\nurl = "{rx.url}"\n',
            '[[rules]]\nname = "everything"\nevents = ["*"]\ntargets = ["console", "crm"]\n',
        )
        store, ids = seed(config, 25)
        deliveries = store.deliveries()
        assert [d.event_count for d in deliveries if d.target == "console"] == [25]
        assert len([d for d in deliveries if d.target == "crm"]) == 25
        anyio.run(Dispatcher(store, config).pass_once)
        out = capsys.readouterr().out
        assert "everything: 25 call.appeared\n" in out  # the rule and the counts
        assert "… and 5 more" in out and out.count("appeared (QUEUED)") == 20  # each line: the event's title
        assert "• Call c0 to +13105550000 appeared (QUEUED)" in out


def test_one_event_reaches_a_target_once_even_with_two_rules(tmp_path: Path) -> None:
    with Receiver() as rx:
        config = make_config(
            tmp_path,
            f'[targets.crm]\nurl = "{rx.url}"\n',
            '[[rules]]\nname = "a"\nevents = ["call.*"]\ntargets = ["crm"]\n'
            '[[rules]]\nname = "b"\nevents = ["*"]\ntargets = ["crm"]\n',
        )
        store, ids = seed(config, 3)
        assert [(d.rule, d.event_id) for d in store.deliveries()] == [("a", i) for i in ids]


def test_send_test_reports_failures(tmp_path: Path) -> None:
    with Receiver(SECRET) as rx:
        config = webhook_config(tmp_path, rx.url)
        assert send_test(config.targets["crm"]).ok
        assert rx.received[0].json["type"] == "notifier.test" and rx.received[0].verified
        rx.respond(500)
        outcome = send_test(config.targets["crm"])
        assert not outcome.ok and "HTTP 500" in (outcome.error or "")


def test_min_interval_paces_a_target(tmp_path: Path) -> None:
    with Receiver() as rx:
        # 500 ms apart, measured when each send has finished: loopback sends differ in
        # length by milliseconds, so 450 ms leaves room for a loaded machine. The first
        # send also opens the connection, so the first gap may be that much shorter.
        config = webhook_config(tmp_path, rx.url, 'min_interval = "500ms"\n')
        store, _ = seed(config, 4)
        arrivals: list[float] = []
        dispatcher = Dispatcher(store, config, on_attempt=lambda d, r: arrivals.append(time.monotonic()))
        anyio.run(dispatcher.pass_once)
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert len(arrivals) == 4 and gaps[0] >= 0.3 and all(gap >= 0.45 for gap in gaps[1:]), gaps


@pytest.mark.parametrize("status", [201, 202, 204, 299])
def test_any_2xx_is_success(tmp_path: Path, status: int) -> None:
    with Receiver(SECRET) as rx:
        rx.respond(status, reply=b"")
        config = webhook_config(tmp_path, rx.url)
        store, _ = seed(config, 1)
        assert anyio.run(Dispatcher(store, config).pass_once) == 1
        assert [d.status for d in store.deliveries()] == ["sent"]
        assert anyio.run(Dispatcher(store, config).pass_once) == 0  # nothing left to send
