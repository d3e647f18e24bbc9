"""A throwaway real PostgreSQL server for the tests, from Debian's server binaries.

One cluster per test session (started only if a test asks for it), one fresh database per test.
The cluster lives in its own temp dir, listens only on 127.0.0.1 on a free port and keeps its
unix socket in the temp dir, so it never touches (or depends on) a system cluster on 5432.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import pytest

PG_LIB = "/usr/lib/postgresql"
OS_USER = "postgres"  # initdb and postgres refuse to run as root
SUPERUSER = "postgres"
TIMEOUT = 60  # seconds for initdb / pg_ctl

# Durability is worthless for a throwaway cluster; these make commits and checkpoints cheap.
SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def find_bindir() -> Path:
    """The bin directory of the highest PostgreSQL version installed under /usr/lib/postgresql."""
    found = glob.glob(f"{PG_LIB}/*/bin/initdb")

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    if not found:
        raise RuntimeError(
            f"no PostgreSQL server under {PG_LIB}/*/bin/ (Debian: apt-get install postgresql); "
            "the PostgreSQL tests need one"
        )
    return Path(max(found, key=version)).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _others_can_enter(directory: Path) -> bool:
    """Whether every directory from / down to ``directory`` is searchable by other users."""
    return all(os.stat(part).st_mode & stat.S_IXOTH for part in [directory, *directory.parents])


class PostgresCluster:
    """A PostgreSQL cluster in a fresh temp dir: ``start()``, ``create_database()``, ``stop()``.

    As root, the server binaries run as the ``postgres`` OS user (initdb refuses root); as any
    other user they run as that user. Auth is ``trust`` and the superuser is ``postgres``.
    """

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.port = 0
        self.tmpdir: Path | None = None
        self._initialized = False

    # -- paths -------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.tmpdir is not None, "cluster not started"
        return self.tmpdir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.tmpdir is not None, "cluster not started"
        return self.tmpdir / "sock"

    @property
    def log_path(self) -> Path:
        assert self.tmpdir is not None, "cluster not started"
        return self.tmpdir / "postgres.log"

    # -- running the server binaries ---------------------------------------------------------

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["runuser", "-u", OS_USER, "--", *argv]

    def _run(self, what: str, argv: list[str]) -> str:
        """Run a server binary; RuntimeError with its output (and the server log) if it fails."""
        # libpq's PG* variables (PGDATA, PGPORT, PGOPTIONS, ...) of the caller must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        try:
            proc = subprocess.run(
                self._as_server_user(argv),
                cwd=self.tmpdir,  # the server user may not be allowed into the caller's cwd
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TIMEOUT + 10,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{what} timed out: {' '.join(argv)}\n{exc.stdout or ''}{exc.stderr or ''}") from exc
        if proc.returncode != 0:
            message = f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{proc.stdout}{proc.stderr}"
            if self.tmpdir is not None and self.log_path.exists():
                message += f"\n--- {self.log_path} ---\n{self.log_path.read_text(errors='replace')[-4000:]}"
            raise RuntimeError(message)
        return proc.stdout + proc.stderr

    def _pg_ctl(self, *args: str) -> str:
        return self._run(
            f"pg_ctl {args[-1]}",
            [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-t", str(TIMEOUT), *args],
        )

    def _make_tmpdir(self) -> Path:
        base = Path(tempfile.gettempdir())
        if os.geteuid() == 0 and not _others_can_enter(base):
            base = Path("/tmp")  # e.g. TMPDIR under /root: the postgres user could not get in
        owner = self._owner()
        tmpdir = Path(tempfile.mkdtemp(prefix="bland-pg-", dir=base))
        os.chown(tmpdir, *owner)
        return tmpdir

    def _initdb(self) -> None:
        self._run(
            "initdb",
            [
                str(self.bindir / "initdb"),
                "-D", str(self.data_dir),
                "--username", SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",  # independent of whichever locales the machine has
                "--no-sync",
            ],
        )  # fmt: skip
        # In postgresql.conf rather than on pg_ctl's command line, so restart() gets the same.
        settings = {
            **SETTINGS,
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:  # stays owned by the server user
            conf.write("\n# tests/postgres.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self._initialized = True

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        """Create the cluster on first use, then start it and wait until it accepts connections."""
        fresh = self.tmpdir is None
        try:
            if fresh:
                self.tmpdir = self._make_tmpdir()
                self.port = free_port()
                self.socket_dir.mkdir()
                os.chown(self.socket_dir, *self._owner())
                self._initdb()
            self._pg_ctl("-l", str(self.log_path), "-w", "start")
        except BaseException:
            pid = self.postmaster_pid()  # e.g. pg_ctl gave up waiting on a server that still came up
            if pid is not None:
                _kill_and_wait(pid)
            if fresh:  # nobody would call stop() after a failed __enter__
                self._remove_tmpdir()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast: running sessions are cut) and remove the temp dir with the data."""
        try:
            self._shutdown()
        finally:
            self._remove_tmpdir()

    def restart(self) -> None:
        """Stop fast and start again on the same data and port, as an outage under running clients."""
        self._shutdown()
        self.start()

    def _shutdown(self) -> None:
        """pg_ctl stop -m fast; if that fails, make sure the postmaster is gone anyway."""
        if self.tmpdir is None or not self._initialized:
            return
        pid = self.postmaster_pid()
        if pid is None:
            return  # not running
        try:
            self._pg_ctl("-m", "fast", "-w", "stop")
        except RuntimeError:
            _kill_and_wait(pid)
            raise
        _wait_gone(pid)  # pg_ctl returns once postmaster.pid is gone, a moment before the process

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid from postmaster.pid, or None if the server is not running."""
        if self.tmpdir is None:
            return None
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _owner(self) -> tuple[int, int]:
        """uid and gid the server runs as: ``postgres`` if we are root, else ourselves."""
        if os.geteuid() != 0:
            return os.geteuid(), os.getegid()
        try:
            user = pwd.getpwnam(OS_USER)
        except KeyError:
            raise RuntimeError(f"running as root, but there is no {OS_USER!r} OS user to run PostgreSQL as") from None
        return user.pw_uid, user.pw_gid

    def _remove_tmpdir(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None
        self._initialized = False

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- databases ---------------------------------------------------------------------------

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this cluster (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its SQLAlchemy URL."""
        import psycopg  # imported here so that conftest works without the postgres extra
        from psycopg import sql

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True, connect_timeout=10
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (nobody reaps it, e.g. a container's PID 1) does not count."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_and_wait(pid: int, timeout: float = 10) -> None:
    """SIGKILL the postmaster; its backends notice that it is gone and exit on their own."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _wait_gone(pid, timeout)


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A started throwaway cluster for the whole session; stopped and removed at its end."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database for this test, as a SQLAlchemy URL."""
    return postgres_cluster.create_database(f"t_{uuid.uuid4().hex}")
