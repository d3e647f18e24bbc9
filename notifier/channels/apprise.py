"""Apprise targets: Slack, email, Teams, ... and the built-in ``console://``.

Apprise's ``notify()`` blocks (requests, smtplib), so it runs in a worker thread under
a process-wide limiter. Its plugins sleep between sends on their own
(``request_rate_per_sec``); that is switched off here and the target's
``min_interval`` is enforced by the dispatcher instead, so one target's pacing never
holds a thread that another target needs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import apprise
from apprise import NotifyFormat, NotifyType

from notifier.channels import Message, Outcome
from notifier.config import Target
from notifier.secret import MASK, redact
from notifier.templates import HTML, MARKDOWN, SLACK, TEXT, render, render_digest
from notifier.threads import ThreadBudget, ThreadsExhausted

#: How each event type looks (Slack's colour bar, the console's colour).
_NOTIFY_TYPES = {
    "call.started": NotifyType.SUCCESS,
    "source.recovered": NotifyType.SUCCESS,
    "call.stuck_queued": NotifyType.WARNING,
    "call.long_running": NotifyType.WARNING,
    "source.unreachable": NotifyType.FAILURE,
}
_URL_PARTS = re.compile(r"[/:@?&=,]")
#: Sends of one target that may hang at once (the one in progress and abandoned ones).
_THREADS_PER_TARGET = 3
_TRUNCATED = "\n… (truncated)"


def _asset() -> apprise.AppriseAsset:
    """Apprise sends inline, in the thread that asks: its own shared pool and deadline
    would put one target's stuck send beside every other target's, and make the process
    wait for it at exit. The bounds are ours (``AppriseChannel``)."""
    return apprise.AppriseAsset(async_mode=False, service_timeout=0)


class _Quiet(logging.Filter):
    """Apprise logs its own complaints about a URL it cannot parse (with the URL's
    tokens in them) before ours says the same in one line; while this thread builds a
    notifier, they are dropped."""

    active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.active, "on", False)


logging.getLogger("apprise").addFilter(_Quiet())


@contextmanager
def _quiet() -> Iterator[None]:
    _Quiet.active.on = True
    try:
        yield
    finally:
        _Quiet.active.on = False


def _instantiate(url: str) -> apprise.plugins.NotifyBase | None:
    from notifier.channels import console  # noqa: F401  (registers console://)

    with _quiet():
        return apprise.Apprise.instantiate(url, asset=_asset(), suppress_exceptions=True)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else ""


def validate_url(url: str) -> str | None:
    """None if Apprise can build a notifier for ``url``, else a reason without the URL."""
    scheme = _scheme(url)
    if not scheme:
        return "not a URL: expected an http(s) webhook URL or an Apprise URL such as slack://..."
    if _instantiate(url) is None:
        return f"Apprise cannot use this {scheme}:// URL (unknown scheme or missing parts)"
    return None


def validate_scheme(url: str) -> str | None:
    """What can be checked of a URL whose parts hold a credential not readable here."""
    from apprise.manager_plugins import NotificationManager

    from notifier.channels import console  # noqa: F401  (registers console://)

    scheme = _scheme(url)
    if not scheme:
        return "not a URL: expected an http(s) webhook URL or an Apprise URL such as slack://..."
    if scheme.lower() not in NotificationManager():
        return f"Apprise has no {scheme}:// service"
    return None


def private_url(url: str, secrets: Sequence[str] = ()) -> str:
    """The URL as written, with ``secrets`` and what Apprise's privacy mode hides
    (tokens, passwords) masked: Apprise's own rendering rebuilds the URL in its
    canonical form, without the port and options the operator wrote, and with a dozen
    of its defaults."""
    instance = _instantiate(url)
    if instance is None:
        return url.split("://", 1)[0] + "://" + MASK
    hidden = set(_URL_PARTS.split(instance.url(privacy=False))) - set(_URL_PARTS.split(instance.url(privacy=True)))
    masked = redact(url, list(secrets))  # first: a declared secret may contain what splits URLs
    for value in sorted((v for v in hidden if len(v) >= 3), key=len, reverse=True):
        for form in {value, unquote(value)}:
            masked = masked.replace(form, MASK)
    return masked


def _format_for(instance: apprise.plugins.NotifyBase) -> tuple[str, NotifyFormat]:
    """(our escaping, the body format we hand Apprise) for this service."""
    declared = instance.notify_format
    supported = declared if isinstance(declared, tuple) else (declared,)
    if type(instance).__name__ == "NotifySlack":
        return SLACK, NotifyFormat.MARKDOWN
    if NotifyFormat.TEXT in supported:
        return TEXT, NotifyFormat.TEXT
    if NotifyFormat.MARKDOWN in supported:
        return MARKDOWN, NotifyFormat.MARKDOWN
    return HTML, NotifyFormat.HTML


class AppriseChannel:
    def __init__(self, target: Target) -> None:
        self.target = target
        instance = _instantiate(target.url.reveal())
        if instance is None:  # config validation makes this unreachable for loaded configs
            raise ValueError(f"target {target.name}: Apprise cannot use this URL")
        instance.request_rate_per_sec = 0
        # The target's ``timeout`` for each connect and read (Apprise's own default is
        # 4 s), unless the URL sets Apprise's ``cto``/``rto`` itself.
        given = parse_qs(urlsplit(target.url.reveal()).query)
        if "cto" not in given:
            instance.socket_connect_timeout = target.timeout
        if "rto" not in given:
            instance.socket_read_timeout = target.timeout
        self.instance = instance
        self.escape, self.body_format = _format_for(instance)
        self._apprise = apprise.Apprise(asset=instance.asset)
        self._apprise.add(instance)
        # Each target its own threads: one endpoint that never answers cannot starve
        # the others, and its abandoned sends are bounded.
        self._threads = ThreadBudget(_THREADS_PER_TARGET, f"apprise-{target.name}")
        # Apprise bounds each connect and each read; a reply that trickles in never
        # trips either, so the whole send has a deadline too.
        self.deadline = 2 * target.timeout + 1.0
        self.body_limit = max(1000, int(getattr(instance, "body_maxlen", 32768) or 32768))

    async def aclose(self) -> None:
        pass

    def render(self, message: Message) -> tuple[str, str]:
        if len(message.events) > 1:
            title, body = render_digest(message.rule, message.events, self.escape)
        else:
            title, body = render(message.rule, message.events[0], self.escape)
        if len(body) > self.body_limit:
            body = body[: self.body_limit - len(_TRUNCATED)] + _TRUNCATED
        return title[:200], body

    async def send(self, message: Message) -> Outcome:
        title, body = self.render(message)
        types = {_NOTIFY_TYPES.get(e.type, NotifyType.INFO) for e in message.events}
        kind = next(iter(types)) if len(types) == 1 else NotifyType.INFO
        try:
            pending = self._threads.start(lambda: self._notify(title, body, kind))
        except ThreadsExhausted as exc:
            return Outcome(ok=False, error=f"not sent: {exc}")
        with anyio.move_on_after(self.deadline):
            await pending.done.wait()
        if not pending.finished:
            return Outcome(ok=False, error=f"no answer within {self.deadline:g}s (abandoned; it may still arrive)")
        result = pending.result()
        if result is None:
            return Outcome(ok=True)
        return Outcome(ok=False, error=result)

    def _notify(self, title: str, body: str, kind: NotifyType) -> str | None:
        result = self._apprise.notify(
            body=body, title=title, notify_type=kind, body_format=self.body_format, log_level=logging.WARNING
        )
        if result:
            return None
        reasons = [entry.message for entry in result.logs() if entry.level in ("WARNING", "ERROR")]
        service = private_url(self.target.url.reveal()).split("?", 1)[0]
        reason = "; ".join(reasons[-3:]) or "Apprise reported a failure without a reason"
        return redact(f"{service}: {reason}", self.target.secrets())[:500]
