"""Apprise channels against real servers on loopback: SMTP (aiosmtpd) and a Slack stand-in."""

from __future__ import annotations

import email
import email.policy
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from aiosmtpd.controller import Controller

from notifier.channels import Message
from notifier.channels.apprise import AppriseChannel
from notifier.config import Target
from notifier.model import Call, Event, call_payload
from notifier.route import compile_rule
from notifier.secret import Secret
from notifier.templates import render
from tests.receivers import Receiver

HOSTILE = "<!channel> *URGENT* @everyone <http://evil.example|click here> [x](http://evil.example) `rm -rf` ~gone~"


def target(url: str, timeout: float = 5) -> Target:
    return Target(
        name="t",
        kind="apprise",
        url=Secret(url),
        secret=None,
        min_interval=0,
        timeout=timeout,
        retry_initial=5,
        retry_max=600,
        give_up_after=86400,
    )


def stuck_event(objective: str = HOSTILE) -> Event:
    call = Call(
        call_id="c-1",
        status="QUEUED",
        to="+13105550123",
        from_="+14155550100",
        objective=objective,
        timestamp="1800000000000",
    )
    return Event(
        id="evt_x_0000000001",
        type="call.stuck_queued",
        detected_at=1_800_000_252.0,
        data={"call": call_payload(call), "queued_for_seconds": 252.4, "threshold_seconds": 120.0},
        call_id="c-1",
    )


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:  # noqa: N802
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[attr-defined]
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, _Inbox]]:
    inbox = _Inbox()
    with socket.socket() as probe:  # aiosmtpd checks its own port, so it needs a real one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


def test_email_through_apprise_to_a_real_smtp_server(smtp: tuple[int, _Inbox]) -> None:
    port, inbox = smtp
    channel = AppriseChannel(target(f"mailto://127.0.0.1:{port}?from=notifier@example.com&to=ops@example.com"))
    outcome = anyio.run(
        channel.send, Message(events=[stuck_event("Confirm\nthe appointment")], rule=None, attempt_at=0.0)
    )
    assert outcome.ok, outcome.error
    (mail,) = inbox.messages
    assert mail["To"] == "ops@example.com"
    assert mail["Subject"] == "Call to +13105550123 stuck in queue for 4m 12s"
    body = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Queued 4m 12s (threshold 2m)" in body
    assert "Objective: Confirm the appointment" in body and "Call ID: c-1" in body


def test_email_failure_is_reported_without_secrets() -> None:
    channel = AppriseChannel(target("mailto://user:pw-Secret99@127.0.0.1:1?from=a@example.com&to=b@example.com"))
    outcome = anyio.run(channel.send, Message(events=[stuck_event()], rule=None, attempt_at=0.0))
    assert not outcome.ok and outcome.error
    assert "pw-Secret99" not in outcome.error


def slack_post(objective: str, rule_body: str | None = None) -> dict:
    with Receiver() as rx:
        rx.respond(200, reply=b"ok")  # what Slack's incoming webhooks answer
        channel = AppriseChannel(target("slack://T1SECRETAAA/B2SECRETBBB/C3SECRETCCCCCCCCCCCCCCCC"))
        # Apprise's Slack plugin posts to hooks.slack.com; point it at our loopback stand-in.
        channel.instance.webhook_url = rx.url.rsplit("/", 2)[0] + "/services"
        rule = compile_rule(name="r", events=["call.stuck_queued"], match=[], targets=["t"], body=rule_body)
        outcome = anyio.run(channel.send, Message(events=[stuck_event(objective)], rule=rule, attempt_at=0.0))
        assert outcome.ok, outcome.error
        (got,) = rx.received
        assert got.path == "/services/T1SECRETAAA/B2SECRETBBB/C3SECRETCCCCCCCCCCCCCCCC"
        return json.loads(got.body)


@pytest.mark.parametrize(("query", "fails"), [("", True), ("?rto=10", False)])
def test_the_targets_timeout_applies_to_apprise_unless_the_url_sets_its_own(query: str, fails: bool) -> None:
    """The stand-in answers after 2 s: past a 1 s target timeout, within Apprise's own
    default (4 s) and within an ``rto`` the URL sets."""
    with Receiver() as rx:
        rx.respond(200, reply=b"ok", hang=2)
        channel = AppriseChannel(target("slack://T1SECRETAAA/B2SECRETBBB/C3SECRETCCCCCCCCCCCCCCCC" + query, timeout=1))
        channel.instance.webhook_url = rx.url.rsplit("/", 2)[0] + "/services"
        outcome = anyio.run(channel.send, Message(events=[stuck_event("hi")], rule=None, attempt_at=0.0))
        assert outcome.ok is not fails, outcome.error
        if fails:
            assert outcome.error is not None and "C3SECRET" not in outcome.error


def test_slack_payload_with_hostile_objective_cannot_ping_link_or_format() -> None:
    payload = slack_post(HOSTILE)
    assert payload["mrkdwn"] is True
    (attachment,) = payload["attachments"]
    assert attachment["title"] == "Call to +13105550123 stuck in queue for 4m 12s"
    text = attachment["text"]
    assert text.startswith("Queued 4m 12s (threshold 2m)\nTo: +13105550123  From: +14155550100\nStatus: QUEUED")
    assert "<!" not in text and "<http" not in text
    assert "<" not in text.replace("&lt;", "") and ">" not in text.replace("&gt;", "")
    assert "@everyone" not in text and "@\u200beveryone" in text
    assert "*URGENT*" not in text and "_URGENT_" not in text and "`rm" not in text and "~gone~" not in text
    assert "URGENT" in text and "click here" in text  # the words survive, only the markup is defused


def test_slack_operator_template_markup_is_kept_but_values_are_escaped() -> None:
    payload = slack_post(
        "<!here>", rule_body="*Stuck* {{ call.objective }} for {{ event.queued_for_seconds | duration }}"
    )
    text = payload["attachments"][0]["text"]
    assert text.startswith("_Stuck_ ")  # the operator's markdown (*italic*) becomes Slack's _italic_
    assert "<!here>" not in text and "!here&gt;" not in text


@pytest.mark.parametrize("fmt, bad", [("markdown", "[x](http://evil.example)"), ("html", "<http://evil.example|")])
def test_escaping_per_format(fmt: str, bad: str) -> None:
    title, body = render(None, stuck_event(), fmt)
    assert bad not in body and "@everyone" not in body


def test_long_bodies_are_capped_for_the_service() -> None:
    channel = AppriseChannel(target("slack://T1SECRETAAA/B2SECRETBBB/C3SECRETCCCCCCCCCCCCCCCC"))
    rule = compile_rule(
        name="r", events=["call.stuck_queued"], match=[], targets=["t"], body="{{ call.objective * 20 }}"
    )
    title, body = channel.render(Message(events=[stuck_event("x" * 5000)], rule=rule, attempt_at=0.0))
    assert len(body) <= channel.body_limit and body.endswith("(truncated)")
    assert "\n" not in title


def test_console_target_prints(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    outcome = anyio.run(
        AppriseChannel(target("console://")).send, Message(events=[stuck_event("hi")], rule=None, attempt_at=0.0)
    )
    assert outcome.ok
    out = capsys.readouterr().out
    assert "Call to +13105550123 stuck in queue for 4m 12s" in out and "Objective: hi" in out


@pytest.mark.parametrize(
    ("value", "for_seconds", "title"),
    [
        (412, 360, "queue backlog: 412 calls queued on pathway_id pw-7 for 6m (threshold 200)"),
        (1, 360, "queue backlog: 1 call queued on pathway_id pw-7 for 6m (threshold 200)"),
        (412, 0, "queue backlog: 412 calls queued on pathway_id pw-7 (threshold 200)"),  # `for` off: no "for 0s"
    ],
)
def test_a_condition_title_reads_as_people_write(value: int, for_seconds: int, title: str) -> None:
    from notifier.templates import sample_event

    sample = sample_event("condition.firing")
    data = {**sample.data, "value": value, "for_seconds": for_seconds, "threshold": 200}
    data.update(condition="queue backlog", metric="queued", group={"pathway_id": "pw-7"})
    assert render(None, Event(sample.id, sample.type, sample.detected_at, data))[0] == title
