"""What the command line's modules share: safe printing, reading the config or only its
``[storage]``, opening the store without creating it, and instants given on the
command line."""

from __future__ import annotations

import argparse
import os
import re
from datetime import datetime

from notifier.config import (
    Config,
    Credentials,
    StorageConfig,
    load_config,
    load_storage,
    resolve_path,
    storage_secrets,
)
from notifier.logs import register_secrets
from notifier.model import iso
from notifier.store import Store, StoreError

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """Text from Bland (or a receiver) as a terminal shows it safely: control characters
    escaped, so that ``\x1b]0;...\x07`` is read, not obeyed."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def config_for(args: argparse.Namespace, credentials: Credentials | None = None) -> Config:
    config = load_config(resolve_path(getattr(args, "file", None) or args.config), os.environ, credentials)
    register_secrets(config.secrets())
    return config


def storage_of(args: argparse.Namespace) -> StorageConfig:
    """Only [storage] of the config (no API key or target secret needs to be present),
    with its password registered for masking."""
    storage = load_storage(resolve_path(args.config))
    register_secrets(storage_secrets(storage))
    return storage


def read_store(args: argparse.Namespace) -> Store:
    """The store for read commands: nothing is ever created."""
    store = Store(storage_of(args).url, create=False)
    try:
        store.require_schema()
    except StoreError:
        store.close()
        raise
    return store


class Usage(Exception):
    """A bad argument: said on one line, exit 2."""


def instant(text: str, option: str) -> float:
    """An ISO 8601 time with an offset (``Z`` allowed): a silence must not end at a
    different hour depending on where the command ran."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise Usage(f"{option}: {text!r} is not an ISO 8601 time such as 2026-12-01T18:00:00+01:00") from None
    if moment.tzinfo is None:
        raise Usage(f"{option}: {text!r} needs an offset (e.g. +01:00 or Z)")
    return moment.timestamp()


#: Instants the commands take: from 1970 to the year 9000 (time zones and intervals
#: need room on either side of the year 9999).
EPOCH_RANGE = (0.0, 221845392000.0)


def local_and_utc(ts: float) -> str:
    local = datetime.fromtimestamp(ts).astimezone()
    return f"{local.strftime('%Y-%m-%d %H:%M %Z')} ({iso(ts)})"
