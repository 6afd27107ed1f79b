"""The `cellmono` command as a user runs it: real processes, the repository's own settings.ini."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cellmono.cli.main import PLUGGED_COMMANDS, load_command

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CELLMONO = [str(Path(sys.executable).parent / "cellmono")]


# Key material, audit log and store of every app these tests run live in a temporary folder, never in the work tree.
STATE = Path(tempfile.mkdtemp(prefix="cellmono-cli-"))
STATE_ENV = {"CELLMONO__GATEWAY__STATE": str(STATE), "CELLMONO__SECURITY__AUDIT_PATH": str(STATE / "audit.sqlite"),
             "CELLMONO__SECURITY__SIGNING_KEYS": str(STATE / "signing-keys.json"),
             "CELLMONO__SECURITY__STORE_PATH": str(STATE / "store.sqlite"),
             "CELLMONO__SECURITY__KEK_FILE": str(STATE / "kek.json")}


def cellmono(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CELLMONO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **STATE_ENV, **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("cellmono: error: ")
    for text in expected:
        assert text in result.stderr, result.stderr


def test_version() -> None:
    result = cellmono("--version")
    assert result.returncode == 0 and result.stdout.startswith("cellmono ")


def test_run_does_real_work_through_the_bus() -> None:
    result = cellmono("run", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    assert "imported 5 notes" in result.stdout
    assert "search 'sandbox' -> Sandboxing risky tools" in result.stdout
    assert "digest: 5 notes" in result.stdout


def test_run_in_serializing_mode_gives_the_same_results() -> None:
    result = cellmono("run", "--seconds", "2", env={"CELLMONO__BUS__SERIALIZE": "true"})
    assert result.returncode == 0, result.stderr
    assert "digest: 5 notes" in result.stdout and "search 'sandbox' -> Sandboxing risky tools" in result.stdout


def test_sigterm_drains_and_exits_cleanly() -> None:
    process = subprocess.Popen([*CELLMONO, "run"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **STATE_ENV})
    try:
        deadline = time.monotonic() + 30
        started = False
        while time.monotonic() < deadline and not started:
            line = process.stdout.readline()
            started = "digest:" in line
        assert started, "the app did not do its work"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_verify_and_diagram() -> None:
    verify = cellmono("verify")
    assert verify.returncode == 0 and verify.stdout.startswith("ok: 4 cells, 4 tools")
    diagram = cellmono("diagram")
    assert diagram.returncode == 0 and diagram.stdout.startswith("flowchart LR")


def test_verify_names_both_cells_when_one_imports_the_other() -> None:
    result = cellmono("verify", "--settings", str(FIXTURES / "settings-leaky.ini"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cell 'beta' (module leaky.beta) imports module leaky.alpha of cell 'alpha'" in result.stderr


@pytest.mark.parametrize("text, expected", [
    ("[bus]\ntimeout = soon\n", ["[bus] timeout: expected a number", "got 'soon'"]),
    ("[bus]\nserialize = perhaps\n", ["[bus] serialize: expected true or false"]),
    ("[bus]\ntimout = 1\n", ["[bus] timout: unknown key (known keys: transport, serialize, timeout"]),
    ("[app]\ncells = ghost\n", ["[app] cells: cell 'ghost' has no [cell.ghost] section"]),
    ("[app]\ncells = x\n[cell.x]\nclass = nowhere.at.all:Cell\n", ["[cell.x] class: cannot import 'nowhere.at.all:Cell'"]),
    ("[app]\ncells = notes\n[cell.notes]\nclass = examples.notes.notes:NotesCell\nmax_notes = lots\n",
     ["[cell.notes] max_notes: expected an integer"]),
    ("[app]\ncells = notes\n[cell.notes]\nclass = examples.notes.notes:NotesCell\nmax_note = 3\n",
     ["[cell.notes] max_note: unknown key (known keys: max_notes)"]),
    ("this is not ini\n", ["not a valid INI file"]),
])
@pytest.mark.parametrize("command", ["run", "verify"])
def test_bad_settings_get_one_clear_line(tmp_path: Path, command: str, text: str, expected: list[str]) -> None:
    settings = tmp_path / "settings.ini"
    settings.write_text(text)
    env = {"PYTHONPATH": str(ROOT)}
    assert_one_line_error(cellmono(command, "--settings", str(settings), env=env), str(settings), *expected)


def test_missing_settings_file(tmp_path: Path) -> None:
    assert_one_line_error(cellmono("run", cwd=tmp_path), "settings.ini: settings file not found")


def test_bad_environment_override() -> None:
    assert_one_line_error(cellmono("verify", env={"CELLMONO__BUS__TIMEOUT": "-1"}),
                          "[bus] timeout: expected a positive value")


def test_version_is_fast_and_loads_no_command_group() -> None:
    """`cellmono --version` builds the parser from the table alone: no group's module, no gateway, no sandbox."""
    probe = ("import sys, contextlib, io\n"
             "from cellmono.cli.main import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n"
             "        main(['--version'])\n"
             "    except SystemExit:\n"
             "        pass\n"
             "print(sorted(name for name in sys.modules if name.startswith(('cellmono.cli.', 'cellmono.gateway', "
             "'cellmono.runtime', 'cellmono.sandbox.wasm', 'cellmono.sandbox.native', 'mcp', 'uvicorn', 'wasmtime')) and name != 'cellmono.cli.main'))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
    started = time.perf_counter()
    assert cellmono("--version").returncode == 0
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("name", sorted(PLUGGED_COMMANDS))
def test_every_plugged_command_registers_its_arguments(name: str) -> None:
    """Each group in the table is a module under cellmono.cli whose `register(parser)` sets a handler."""
    target = PLUGGED_COMMANDS[name][0]
    module_name = target.partition(":")[0]
    assert module_name.startswith("cellmono.cli."), target
    parser = argparse.ArgumentParser(prog=f"cellmono {name}")
    load_command(name, parser)
    subcommands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    handlers = [sub.get_default("handler") for action in subcommands for sub in action.choices.values()]
    handlers = handlers or [parser.get_default("handler")]
    assert all(callable(handler) for handler in handlers), f"{target} set no handler on some command"


def test_usage_errors_are_one_line_too() -> None:
    result = cellmono("serve", "--port", "eighty")
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == ("cellmono serve: error: argument --port: invalid int value: 'eighty' "
                             "(see cellmono serve --help)\n")
    assert_one_line_error(cellmono("serve", "--port", "70000"), "--port 70000: expected 0 to 65535")


@pytest.mark.parametrize("module, expected", [
    ("cellmono.cli.ghost", "'cellmono ghost' is broken: cellmono.cli.ghost (listed as cellmono.cli.ghost:register) "
                           "cannot be imported"),
    ("needs_redis", "'cellmono ghost' needs 'redis', which is not installed: pip install 'cellmono[redis]'"),
])
def test_a_group_that_cannot_load_is_one_clear_line(tmp_path: Path, module: str, expected: str) -> None:
    """A missing extra says which and how to install it; a missing cellmono module is named as a broken install."""
    (tmp_path / "needs_redis.py").write_text("raise ModuleNotFoundError(\"No module named 'redis'\", name='redis')\n")
    probe = ("import sys\n"
             f"sys.path.insert(0, {str(tmp_path)!r})\n"
             "from cellmono.cli import main\n"
             f"main.PLUGGED_COMMANDS['ghost'] = ({module + ':register'!r}, 'a group that cannot load')\n"
             "sys.exit(main.main(['ghost', '--anything']))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **STATE_ENV})
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("cellmono: error: ") and expected in result.stderr, result.stderr
    assert cellmono("verify").returncode == 0  # every other command keeps working
