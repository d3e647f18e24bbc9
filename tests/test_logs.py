"""Log lines: human format on a terminal, syslog priorities for the journal, no secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env


def run_with_stderr_file(tmp_path: Path, env: dict[str, str]) -> str:
    log = tmp_path / "stderr.log"
    code = (
        "import logging, os, sys\n"
        "from notifier.logs import setup_logging, register_secrets, log, kv\n"
        "setup_logging('debug')\n"
        "register_secrets(['hunter2-secret'])\n"
        "log.info('poll failed', extra=kv(reason='token hunter2-secret rejected', call_id='c 1'))\n"
        "log.warning('plain')\n"
    )
    with log.open("w") as handle:
        st = os.fstat(handle.fileno())
        env = dict(env)
        if env.pop("MATCH_JOURNAL", None):
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", code], stderr=handle, env=env, check=True, cwd=tmp_path)
    return log.read_text()


def test_human_format_with_key_values_and_redaction(tmp_path: Path) -> None:
    text = run_with_stderr_file(tmp_path, cli_env(None, tmp_path))
    first, second = text.splitlines()
    assert ' info    notifier: poll failed reason="token ********** rejected" call_id="c 1"' in first
    assert first[:4].isdigit() and "hunter2" not in text
    assert second.endswith("warning notifier: plain")


def test_journal_format_has_priorities_and_no_timestamps(tmp_path: Path) -> None:
    text = run_with_stderr_file(tmp_path, {**cli_env(None, tmp_path), "MATCH_JOURNAL": "1"})
    first, second = text.splitlines()
    assert first == '<6>poll failed reason="token ********** rejected" call_id="c 1"'
    assert second == "<4>plain"
