"""``console://``: notifications printed to stdout (the demo, and trying rules locally).

Colour only when stdout is a terminal, so piped output stays plain text.
"""

from __future__ import annotations

import sys
import time

from apprise.decorators import notify

_COLOURS = {"info": "36", "success": "32", "warning": "33", "failure": "31"}


@notify(on="console", name="Console")
def _print(body: str, title: str = "", notify_type: str = "info", **_: object) -> bool:
    stream = sys.stdout
    stamp = time.strftime("%H:%M:%S")
    if stream.isatty():
        colour = _COLOURS.get(str(getattr(notify_type, "value", notify_type)), "0")
        heading = f"\033[2m{stamp}\033[0m \033[1;{colour}m{title}\033[0m"
        body = "\n".join(f"  \033[2m│\033[0m {line}" for line in body.splitlines())
    else:
        heading = f"{stamp} {title}"
        body = "\n".join(f"  | {line}" for line in body.splitlines())
    stream.write(f"{heading}\n{body}\n\n" if body else f"{heading}\n\n")
    stream.flush()
    return True
