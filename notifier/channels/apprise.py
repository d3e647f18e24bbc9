"""Apprise targets: Slack, email, Teams, ... and the built-in ``console://``."""

from __future__ import annotations

import apprise


def validate_url(url: str) -> str | None:
    """None if Apprise can build a notifier for ``url``, else a reason without the URL."""
    from notifier.channels import console  # noqa: F401  (registers console://)

    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme:
        return "not a URL: expected an http(s) webhook URL or an Apprise URL such as slack://..."
    if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
        return f"Apprise cannot use this {scheme}:// URL (unknown scheme or missing parts)"
    return None


def private_url(url: str) -> str:
    """Apprise's own privacy rendering of a URL (tokens and passwords masked)."""
    instance = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if instance is None:
        return url.split("://", 1)[0] + "://" + "**********"
    return str(instance.url(privacy=True))
