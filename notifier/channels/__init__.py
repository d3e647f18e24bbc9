"""Delivery channels. Each sends one message and returns an ``Outcome``; the outbox
knows this interface, never a channel's internals."""

from urllib.parse import urlsplit, urlunsplit

from notifier.config import Target
from notifier.secret import MASK


def describe_target(target: Target) -> str:
    """The target's URL with every credential masked, for ``check`` and logs."""
    url = target.url.reveal()
    if target.kind == "apprise":
        from notifier.channels.apprise import private_url

        return private_url(url)
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
