"""Delivery channels. Each sends one message and returns an ``Outcome``; the outbox
knows this interface, never a channel's internals."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from notifier.config import Target
from notifier.model import Event
from notifier.route import Rule
from notifier.secret import MASK, redact

_SECRET_KEY = re.compile(r"token|key|pass|pwd|secret|auth|sig|cred|session", re.IGNORECASE)


@dataclass(frozen=True)
class Message:
    """What one delivery sends: one event, or several for an Apprise digest."""

    events: list[Event]
    rule: Rule | None  # whose templates to use; None: the defaults
    attempt_at: float  # wall-clock time of this attempt (webhook-timestamp)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    dead: bool = False  # permanent: do not retry (410 Gone)
    status_code: int | None = None
    error: str | None = None  # safe to store and log: no secrets
    retry_after: float | None = None


class Channel(Protocol):
    async def send(self, message: Message) -> Outcome: ...

    async def aclose(self) -> None: ...


def make_channel(target: Target) -> Channel:
    if target.kind == "webhook":
        from notifier.channels.webhook import WebhookChannel

        return WebhookChannel(target)
    from notifier.channels.apprise import AppriseChannel

    return AppriseChannel(target)


def describe_target(target: Target) -> str:
    """The target's URL with every credential masked, for ``check`` and logs."""
    url = target.url.reveal()
    if target.kind == "apprise":
        from notifier.channels.apprise import private_url

        # Apprise's privacy mode knows each service's tokens; what it does not hide, a
        # credential's value, a password, a query value named like a key, is masked here.
        parts = urlsplit(url)
        hidden = [parts.password or "", parts.fragment]
        hidden += [value for name, value in parse_qsl(parts.query) if _SECRET_KEY.search(name)]
        return redact(private_url(url, target.credentials), hidden)
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username or parts.password:
        netloc = f"{MASK}@{netloc}"
    # Webhook paths and queries often carry tokens: show where it goes, not the key.
    path = f"/{MASK}" if parts.path.strip("/") or parts.query else ""
    signed = " (signed)" if target.secret else " (unsigned)"
    return urlunsplit((parts.scheme, netloc, path, "", "")) + signed
