"""Settings copied from a blog post, typed at 3 a.m.: a misspelled section, key or environment override is an
error with the closest known name, a role nobody defined is an error listing the known roles, and `[roles]` is
where roles live. Checked through the real `cellmono` command on a copy of the example app: one line on stderr,
exit 2, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CELLMONO = str(Path(sys.executable).parent / "cellmono")


@pytest.fixture
def app(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "settings.ini", tmp_path / "settings.ini")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def cellmono(folder: Path, *args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith("CELLMONO")}
    return subprocess.run([CELLMONO, *args], cwd=folder, capture_output=True, text=True, timeout=120,
                          env={**env, **environment}, stdin=subprocess.DEVNULL)


def edited(folder: Path, old: str, new: str) -> None:
    path = folder / "settings.ini"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("cellmono: error: "), result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


def test_the_example_settings_are_sound(app: Path) -> None:
    assert cellmono(app, "verify").returncode == 0


@pytest.mark.parametrize("old,new,expected", [
    ("[gateway]", "[gatway]", "[gatway]: unknown section; did you mean [gateway]?"),
    ("[security]", "[securty]", "did you mean [security]?"),
    ("[roles]", "[role]", "did you mean [roles]?"),
    ("[cell.search]", "[cells.search]", "did you mean [cell.search]?"),
    ("[supervision]", "[Supervision]", "did you mean [supervision]?"),
])
def test_a_misspelled_section_is_named_with_a_suggestion(app: Path, old: str, new: str, expected: str) -> None:
    edited(app, old, new)
    one_line_error(cellmono(app, "verify"), "settings.ini", expected)


@pytest.mark.parametrize("old,new,expected", [
    ("max_restarts = 5", "max_restart = 5", "[supervision] max_restart: unknown key"),
    ("audit_path = ", "audit_pth = ", "did you mean 'audit_path'?"),
    ("[cell.search]\n", "[cell.search]\nreplicsa = 2\n", "did you mean 'replicas'?"),
    ("timeout = 5.0", "timeout = soon", "[bus] timeout: expected a number"),
])
def test_a_misspelled_or_wrong_key_is_named(app: Path, old: str, new: str, expected: str) -> None:
    edited(app, old, new)
    one_line_error(cellmono(app, "verify"), expected)


@pytest.mark.parametrize("variable,expected", [
    ("CELLMONO__GATWAY__PORT", "did you mean CELLMONO__GATEWAY__PORT?"),
    ("CELLMONO__BUS__TIMOUT", "did you mean CELLMONO__BUS__TIMEOUT?"),
    ("CELLMONO_BUS_TIMEOUT", "did you mean CELLMONO__BUS__TIMEOUT?"),
    ("CELLMONO__BUS_TIMEOUT", "did you mean CELLMONO__BUS__TIMEOUT?"),
    ("cellmono__bus__timeout", "did you mean CELLMONO__BUS__TIMEOUT?"),
])
def test_a_misspelled_environment_override_is_named(app: Path, variable: str, expected: str) -> None:
    one_line_error(cellmono(app, "verify", **{variable: "2"}), f"environment variable {variable}", expected)


def test_other_cellmono_variables_are_left_alone(app: Path) -> None:
    result = cellmono(app, "verify", CELLMONO_KEK="x", CELLMONO_API_KEY="y", CELLMONO__BUS__TIMEOUT="2")
    assert result.returncode == 0, result.stderr


def test_roles_live_in_their_own_section(app: Path) -> None:
    edited(app, "importer = notes:read, notes:write", "importer = notes:read, notes:write\nauditor = audit:read")
    assert cellmono(app, "verify").returncode == 0
    edited(app, "roles = importer", "roles = auditor")  # the importer cell now acts as an auditor
    assert cellmono(app, "verify").returncode == 0


def test_an_unknown_role_names_the_known_roles(app: Path) -> None:
    edited(app, "roles = importer", "roles = importr")
    one_line_error(cellmono(app, "verify"), "[cell.importer] roles: unknown role 'importr'",
                   "known roles: admin, editor, reader, importer")
    one_line_error(cellmono(app, "run", "--seconds", "1"), "unknown role 'importr'", "known roles: admin")


def test_an_unknown_role_for_a_new_key_names_the_known_roles(app: Path) -> None:
    result = cellmono(app, "serve", "--new-key", "rita", "--role", "readr",
                      CELLMONO__GATEWAY__STATE=str(app / "state"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result
    error = result.stderr.splitlines()[-1]  # after the development-KEK notice of a first run
    assert error.startswith("cellmono: error: unknown role 'readr'; known roles: ") and "reader" in error, error


@pytest.mark.parametrize("old,new,expected", [
    ("reader = notes:read,", "reader = notes read,", "role 'reader'"),
    ("reader = notes:read,", "Rea der = notes:read,", "role name"),
    ("kek_env = CELLMONO_KEK", "kek_env = CELLMONO_KEK\nrole.reader = notes:read",
     "[roles] reader: the role is also defined as [security] role.reader"),
])
def test_a_bad_role_is_refused_without_echoing_the_section(app: Path, old: str, new: str, expected: str) -> None:
    edited(app, old, new)
    result = cellmono(app, "verify")
    one_line_error(result, expected)
    assert "signing_keys" not in result.stderr  # the message, never the section's values
