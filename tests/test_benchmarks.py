"""The benchmark suite runs (at small N); its figures live in BENCHMARKS.md, not in asserts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = out.read_text()
    assert "| 1,000 |" in report and "cycle / json.loads" in report and "real HTTP client" in report
    assert "| 20,000 |" in report  # the persistence-with-history table
    assert "## Conditions over a steady snapshot" in report and "| backlog per pathway |" in report
