"""Shared fixtures: the simulated Bland API on loopback, config files, the CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier.simulator import BlandSimulator

PYTHON = sys.executable


@pytest.fixture
def sim() -> Iterator[BlandSimulator]:
    with BlandSimulator(seed=1) as simulator:
        yield simulator


def write_config(directory: Path, sim: BlandSimulator | None, body: str = "", *, source_extra: str = "") -> Path:
    """A config whose API key comes from $TEST_BLAND_KEY, as an operator would write it."""
    base_url = sim.base_url if sim else "http://127.0.0.1:9"
    org = sim.org_id if sim else "org"
    text = textwrap.dedent(
        f"""
        [source]
        base_url = "{base_url}"
        api_key = "${{TEST_BLAND_KEY}}"
        org_id = "{org}"
        poll_interval = "100ms"
        timeout = "2s"
        unreachable_after = "1s"
        """
    ) + textwrap.dedent(source_extra) + "\n[storage]\nurl = \"sqlite:///notifier.db\"\n" + textwrap.dedent(body)
    path = directory / "notifier.toml"
    path.write_text(text)
    return path


def cli_env(sim: BlandSimulator | None, directory: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG", "NOTIFIER_"))}
    env.update(TEST_BLAND_KEY=sim.api_key if sim else "key", STATE_DIRECTORY=str(directory))
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "notifier", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
