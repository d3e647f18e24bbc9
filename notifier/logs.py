"""Logging: one line per record on stderr, key=value context, no secrets ever.

Under systemd (``$JOURNAL_STREAM`` names our stderr) each line starts with a ``<N>``
syslog priority and carries no timestamp, since journald adds its own.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from notifier.secret import redact

LEVELS = ("debug", "info", "warning", "error")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

log = logging.getLogger("notifier")


def kv(**context: Any) -> dict[str, Any]:
    """``log.info("sent", extra=kv(target="ops", event_id=...))``."""
    return {"kv": context}


def _value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class _Formatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal
        self.secrets: list[str] = []

    def format(self, record: logging.LogRecord) -> str:
        parts = [record.getMessage()]
        context = getattr(record, "kv", None)
        if context:
            parts.extend(f"{key}={_value(val)}" for key, val in context.items() if val is not None)
        if record.exc_info:
            parts.append(f"error={_value(self.formatException(record.exc_info))}")
        line = " ".join(parts)
        if self.journal:
            line = f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            line = f"{stamp} {record.levelname.lower():7} {record.name}: {line}"
        return redact(line, self.secrets).replace("\n", "\\n")


_formatter: _Formatter | None = None


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return bool(device and inode) and f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def setup_logging(level: str = "info") -> None:
    global _formatter
    _formatter = _Formatter(journal=_stderr_is_journal())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(level.upper())
    # Third-party chatter (Apprise logs full URLs at debug) stays at warning and
    # passes through the same redaction.
    for noisy in ("apprise", "httpx", "httpcore", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def scrub(text: str) -> str:
    """``text`` with every registered secret masked, for output that is not a log line."""
    return redact(text, _formatter.secrets) if _formatter is not None else text


def register_secrets(values: Iterable[str]) -> None:
    """Tell the log formatter which values to mask (called on every config load)."""
    if _formatter is not None:
        _formatter.secrets = [v for v in values if v]
