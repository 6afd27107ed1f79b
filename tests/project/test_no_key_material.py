"""No key material in git, ever: no key file, KEK, API-key file or database is tracked."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = re.compile(r"(^|/)(kek[^/]*|signing-keys[^/]*|api-keys[^/]*|[^/]*\.pem|[^/]*\.key)$|\.(sqlite3?|db)$")


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("git and a clone are needed to check what is tracked")
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()


def test_no_key_or_database_is_tracked() -> None:
    leaked = [path for path in tracked_files() if SECRET.search(path)]
    assert not leaked, f"key material or databases are tracked: {leaked}"


def test_the_pattern_catches_what_the_app_writes() -> None:
    for path in ("var/kek.json", "nbs/var/store.sqlite", "tests/fixtures/var/signing-keys.json",
                 "deep/var/api-keys.json", "audit.db"):
        assert SECRET.search(path), path
    assert not SECRET.search("nbs/12_tokens.ipynb")


def test_var_is_ignored_at_any_depth() -> None:
    for path in ("var/kek.json", "nbs/var/kek.json", "examples/notes/var/store.sqlite"):
        completed = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert completed.returncode == 0, f"{path} is not ignored"
