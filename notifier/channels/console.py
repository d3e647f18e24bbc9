"""``console://``: notifications printed to stdout (the demo, and trying rules locally)."""

from __future__ import annotations

import sys

from apprise.decorators import notify


@notify(on="console", name="Console")
def _print(body: str, title: str = "", notify_type: str = "info", **_: object) -> bool:
    stream = sys.stdout
    if title:
        stream.write(f"{title}\n")
    stream.write(f"{body}\n\n")
    stream.flush()
    return True
