"""The shipped unit: hardened (systemd-analyze security <= 1.5) and warning-free."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "bland-notifier.service"


def test_security_exposure_is_at_most_1_5() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True, text=True, check=True
    )
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    print(f"\nsystemd-analyze security: {score}")
    assert score <= 1.5


def test_verify_prints_nothing(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's notifier.
    notifier = shutil.which("notifier") or str(Path(sys.executable).parent / "notifier")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/bland-notifier/bin/notifier", notifier))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_unit_has_what_operations_rely_on() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "DynamicUser=yes",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "MemoryDenyWriteExecute=yes",
    ):
        assert line in text
    assert re.search(r"^WatchdogSec=\S+", text, re.M) and re.search(r"^LoadCredential=bland_api_key:", text, re.M)
