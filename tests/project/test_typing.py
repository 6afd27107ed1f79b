"""The package type-checks under `mypy --strict`: no errors on `cellmono` (settings in pyproject.toml's [tool.mypy])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_strict_reports_no_errors() -> None:
    # A missing mypy makes `-m mypy` exit non-zero too, so this fails rather than skips.
    completed = subprocess.run([sys.executable, "-m", "mypy", "--strict", "cellmono"],
                               cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, f"mypy reports errors:\n{completed.stdout}{completed.stderr}"


def test_pyflakes_rules_report_nothing() -> None:
    # ruff's F rules (pyflakes): unused imports and variables, undefined names, f-strings without placeholders
    completed = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F", "--output-format", "concise",
                                "cellmono", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, f"ruff reports:\n{completed.stdout}{completed.stderr}"
