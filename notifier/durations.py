"""Durations as people write them in the config (``250ms``, ``1h30m``, ``7d``) and read them."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


class Duration(float):
    """Seconds, parsed from a duration string; a float everywhere else."""

    def __repr__(self) -> str:
        return f"Duration({float(self)}s)"


def parse_duration(text: str) -> Duration:
    """``"1h30m"`` -> 5400.0. Raises ValueError with a message a user can act on."""
    stripped = text.strip().lower()
    if not stripped:
        raise ValueError('empty duration; write e.g. "5s", "250ms", "1h30m"')
    position, total = 0, 0.0
    for match in _PART.finditer(stripped):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(stripped):
        raise ValueError(
            f'invalid duration {text!r}; write a number and a unit (ms, s, m, h, d, w), e.g. "5s", "250ms", "1h30m"'
        )
    return Duration(total)


def format_duration(seconds: float | None) -> str:
    """Human form: ``252`` -> ``"4m 12s"``; sub-second values as ms. None -> ``"unknown"``."""
    if seconds is None:
        return "unknown"
    if 0 < seconds < 1:
        return f"{round(seconds * 1000)}ms"
    remaining = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2]) if parts else "0s"
