"""SQLite's specifics: where the file is, its mode, its pragmas, and how writers lock."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

#: Seconds a writer waits for another writer's lock (the daemon vs a CLI command).
BUSY_TIMEOUT = 30


class PathError(Exception):
    """The URL names no usable database file."""


def database_path(url: str, env: dict[str, str] | None = None) -> Path:
    """The file behind a ``sqlite:///`` URL; relative paths go to $STATE_DIRECTORY or cwd."""
    env = dict(os.environ) if env is None else env
    database = make_url(url).database
    if not database or database == ":memory:":
        raise PathError(f"storage.url {url!r} names no database file")
    path = Path(database)
    if not path.is_absolute():
        state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
        path = Path(state_dir or os.getcwd()) / path
    return path


_HEADER = b"SQLite format 3\x00"


def check_header(path: Path) -> None:
    """Refuse a file that is not a SQLite database before SQLite touches it (it would
    fail later, deep in a migration; an empty file is a new database)."""
    try:
        with path.open("rb") as file:
            head = file.read(len(_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PathError(f"cannot read the database {path}: {exc.strerror}") from None
    if head and head != _HEADER:
        raise PathError(
            f"{path} is not a SQLite database (it was left as it is); restore it or point storage.url elsewhere"
        )


def is_damaged(exc: BaseException) -> bool:
    """A database error that is the file's fault (not a lock, not a full disk): waiting
    will not cure it."""
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, sqlite3.DatabaseError) and not isinstance(orig, sqlite3.OperationalError)


def location_problem(path: Path) -> str | None:
    """Why this user cannot keep a database at ``path``, if it cannot. Said before
    anything is created: a directory that does not exist is a mistake in the config
    (created silently, as root, it would be one the service cannot write)."""
    directory = path.parent
    try:
        if directory.exists() and not directory.is_dir():
            return f"{directory} is not a directory"
        if not directory.exists():
            return f"the directory {directory} does not exist (create it; StateDirectory= creates only its own)"
        if path.is_dir():
            return f"{path} is a directory; name a file in it"
    except PermissionError:
        return f"{directory} cannot be reached by this user (uid {os.geteuid()}): a directory above it is closed"
    for needed, mode in ((path, os.R_OK | os.W_OK), (directory, os.W_OK | os.X_OK)):
        if needed.exists() and not os.access(needed, mode):
            return f"{needed} is not writable by this user (uid {os.geteuid()})"
    return None


def create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does; its -wal/-shm inherit the mode."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def make_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Checkpoints copy the WAL back into the database: that work is kept off the
        # poll path and done by ``checkpoint()`` on a timer (closing the last
        # connection checkpoints too).
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front (IMMEDIATE): two writers (two daemons, or the
        # daemon and a CLI command) then wait on busy_timeout instead of failing
        # mid-transaction. Readers stay deferred and never block the daemon.
        options = conn.get_execution_options()
        if options.get("write"):
            # Polls (events, their deliveries) are fsynced; attempt bookkeeping is not,
            # since losing the last attempts to a power cut only means a resend.
            conn.exec_driver_sql(f"PRAGMA synchronous={'FULL' if options.get('durable', True) else 'NORMAL'}")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def checkpoint(engine: Engine) -> None:
    """Fold the WAL into the database without blocking readers or the next poll."""
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
