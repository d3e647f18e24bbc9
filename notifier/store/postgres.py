"""PostgreSQL's specifics (psycopg 3): bounded waits on a lost server, and cheap
transactions where durability does not matter."""

from __future__ import annotations

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine

#: The longest a transaction may sit idle before the server ends it (a fenced commit
#: sets its own, shorter bound: ``notifier.lease.Term.verify``).
IDLE_IN_TRANSACTION_MS = 10_000

#: A daemon cut off from the server must notice within seconds, not after the kernel's
#: TCP timeouts (minutes): it has a lease to keep and a health endpoint to answer.
CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms: unacknowledged writes fail after this
    "application_name": "bland-notifier",
    # A daemon cut off in the middle of a transaction holds its locks (the lease row
    # among them) until the server notices: the server's keepalives for the session end
    # it within ~11 s of a partition, sooner than the lease a standby waits out.
    "options": "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
    f" -c tcp_user_timeout=10000 -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
}


def make_engine(url: str) -> Engine:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(
            "PostgreSQL needs the driver: pip install 'bland-notifier[postgres]'", name="psycopg"
        ) from None
    engine = create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args=CONNECT_ARGS)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Attempt bookkeeping need not wait for the WAL flush (a lost record only
        # means a resend); polls, events and deliveries do.
        if not conn.get_execution_options().get("durable", True):
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")

    return engine
