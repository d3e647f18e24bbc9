"""Shared fixtures: the simulated Bland API on loopback, config files, the CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings

from notifier.simulator import BlandSimulator
from notifier.store import Store
from tests.postgres import postgres_cluster, postgres_url  # noqa: F401

PYTHON = sys.executable

# Deadlines are the machine's jitter, not the code's: off. In CI (and under mutation
# testing) examples are derandomized, so that a failing property reproduces as it is.
settings.register_profile("local", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") or os.environ.get("MUTANT_UNDER_TEST") else "local")
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL on each backend: a SQLite file, or a fresh database on the test cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/notifier.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sim() -> Iterator[BlandSimulator]:
    with BlandSimulator(seed=1) as simulator:
        yield simulator


def write_config(
    directory: Path,
    sim: BlandSimulator | None,
    body: str = "",
    *,
    source_extra: str = "",
    storage: str = 'url = "sqlite:///notifier.db"',
    name: str = "notifier.toml",
) -> Path:
    """A config whose API key comes from $TEST_BLAND_KEY, as an operator would write it."""
    base_url = sim.base_url if sim else "http://127.0.0.1:9"
    org = sim.org_id if sim else "org"
    text = (
        textwrap.dedent(
            f"""
        [source]
        base_url = "{base_url}"
        api_key = "${{TEST_BLAND_KEY}}"
        org_id = "{org}"
        poll_interval = "100ms"
        timeout = "2s"
        unreachable_after = "1s"
        """
        )
        + textwrap.dedent(source_extra)
        + f"\n[storage]\n{storage}\n"
        + textwrap.dedent(body)
    )
    path = directory / name
    path.write_text(text)
    return path


def announce_to(url: str, *, events: str = '"call.appeared"', secret: str | None = None, extra: str = "") -> str:
    """Config text: announce existing calls, and send the given events to webhook ``crm``."""
    signed = f'secret = "{secret}"\n' if secret else ""
    return (
        f'[detect]\nannounce_existing = true\n[targets.crm]\nurl = "{url}"\n{signed}{extra}'
        f'[[rules]]\nname = "all"\nevents = [{events}]\ntargets = ["crm"]\n'
    )


def crm_config(directory: Path, store_url: str, receiver_url: str) -> Any:
    """A loaded config that sends every event to webhook target ``crm`` (its source is
    never polled: for tests that drive the store and the outbox themselves)."""
    from notifier.config import load_config

    path = directory / "crm.toml"
    path.write_text(
        f'[source]\napi_key = "k"\norg_id = "o"\n[storage]\nurl = "{store_url}"\n'
        f'[targets.crm]\nurl = "{receiver_url}"\n[[rules]]\nname = "all"\nevents = ["*"]\ntargets = ["crm"]\n'
    )
    return load_config(path, {})


def cli_env(sim: BlandSimulator | None, directory: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG", "NOTIFIER_"))}
    env.update(TEST_BLAND_KEY=sim.api_key if sim else "key", STATE_DIRECTORY=str(directory))
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "notifier", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail the test on time-out."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class DaemonProcess:
    """``notifier run`` as a real subprocess, stderr kept in a file for assertions.

    Every one started is killed when its test ends, however it ends (``_reap_daemons``).
    """

    started: list[DaemonProcess] = []

    def __init__(self, directory: Path, env: dict[str, str], args: list[str] | None = None) -> None:
        self.directory = directory
        self.log_path = directory / f"daemon-{id(self)}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "notifier", *(args or ["run"])],
            env=env,
            cwd=directory,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        DaemonProcess.started.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = 15, timeout: float = 30) -> int:
        """Signal, wait for the exit code; kill it (and fail) if it does not exit in time."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(autouse=True)
def _reap_daemons() -> Iterator[None]:
    yield
    while DaemonProcess.started:
        daemon = DaemonProcess.started.pop()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
        daemon._log.close()


def from_store(directory: Path, read: Callable[[Store], list[T]]) -> list[T]:
    """What ``read`` finds in a daemon's store: nothing before the daemon has made the
    database and its tables; any other error is the test's failure, raised."""
    from sqlalchemy.exc import OperationalError

    from notifier.store import StoreError

    try:
        store = Store("sqlite:///notifier.db", {"STATE_DIRECTORY": str(directory)}, create=False)
    except StoreError as exc:
        if "no database at" in str(exc):
            return []
        raise
    try:
        return read(store)
    except OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        store.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test left a daemon (or any other child) running."""
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == os.getpid() and state != "Z" and "notifier" in cmdline:
            left.append((int(proc.name), cmdline.strip()))
    for pid, _ in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    if left:
        print(f"\nprocesses left running by the tests (killed now): {left}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
