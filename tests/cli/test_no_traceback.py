"""No traceback on any CLI path. Every command of the `cellmono` tree (walked from the real parser, so a new
command is covered the day it is added) runs as a subprocess, as an operator at 3 a.m. would run it: in an empty
folder, with a settings file in a folder that does not exist, with garbage bytes for settings, with a misspelled
section, with a wrong value, with a misspelled environment override, and with nonsense arguments. Each run must
exit non-zero with its error as one line that starts with `cellmono` and names the cause; never a Python
traceback."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cellmono.cli.main import PLUGGED_COMMANDS, build_parser

CELLMONO = str(Path(sys.executable).parent / "cellmono")
TIMEOUT = 40  # seconds; a command that waits for a broker or a socket must still give up on bad settings


def leaf_commands() -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every runnable command path with its parser, e.g. (['audit', 'verify'], parser)."""
    found = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        if not groups:
            found.append((path, parser))
            return
        for name, sub in groups[0].choices.items():
            walk(sub, [*path, name])

    walk(build_parser(list(PLUGGED_COMMANDS)), [])
    return found


LEAVES = leaf_commands()

# Commands that may exit 0 on a missing settings file, and why. Each entry is a known gap, reported to its owner.
EXIT_ZERO_ALLOWED = {
    "runbook history": "reads the audit log beside the settings only if there is one; an empty history is not an "
                       "error (nbs/81_cli_runbook.ipynb)",
}


def filled(path: list[str], parser: argparse.ArgumentParser, filler: str) -> list[str]:
    """The command with every required argument given `filler` (or its first choice)."""
    argv = list(path)
    for action in parser._actions:
        if action.dest == "help" or isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings and not action.required:
            continue
        value = str(action.choices[0]) if action.choices else filler
        argv += [action.option_strings[0], value] if action.option_strings else [value]
    return argv


def takes_settings(parser: argparse.ArgumentParser) -> bool:
    return any("--settings" in action.option_strings for action in parser._actions)


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int | None, str, str]:
    process = subprocess.Popen([CELLMONO, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return None, stdout, stderr
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def world() -> dict[str, Path]:
    top = Path(tempfile.mkdtemp(prefix="cellmono-no-traceback-"))
    (top / "empty").mkdir()
    (top / "garbage.ini").write_bytes(b"\x00\xff\xfe[[[ not = an ini\n\x80\x81 = \n")
    (top / "typo.ini").write_text("[app]\ncells =\n\n[gatway]\nport = 8765\n")
    return {"top": top, "empty": top / "empty"}


def scenarios(path: list[str], parser: argparse.ArgumentParser, world: dict[str, Path]) -> dict[str, tuple[list[str], Path, dict[str, str]]]:
    state = world["top"] / "state"
    env = {**os.environ, "CELLMONO__GATEWAY__STATE": str(state), "CELLMONO__SECURITY__AUDIT_PATH": str(state / "a.db"),
           "CELLMONO__SECURITY__SIGNING_KEYS": str(state / "keys.json"),
           "CELLMONO__SECURITY__STORE_PATH": str(state / "s.db"), "CELLMONO__SECURITY__KEK_FILE": str(state / "kek.json"),
           "CELLMONO_CACHE_DIR": str(world["top"] / "cache"), "NO_COLOR": "1"}
    env.pop("CI", None)
    plain = filled(path, parser, "no-such-thing")
    cases = {"empty folder": (plain, world["empty"], env),
             "nonsense arguments": (filled(path, parser, "../../\x01nonsense") + ["--no-such-option"], world["empty"], env)}
    if takes_settings(parser):
        for name, settings in [("missing folder", world["top"] / "missing" / "settings.ini"),
                               ("garbage settings", world["top"] / "garbage.ini"),
                               ("misspelled section", world["top"] / "typo.ini")]:
            cases[name] = ([*plain, "--settings", str(settings)], world["empty"], env)
        cases["misspelled variable"] = (plain, world["empty"], {**env, "CELLMONO__GATWAY__PORT": "1"})
    return cases


@pytest.fixture(scope="module")
def outcomes(world: dict[str, Path]) -> dict[tuple[str, str], tuple[int | None, str, str]]:
    """Every case of every command, run once, a few at a time (most of a run is Python starting up)."""
    cases = {(" ".join(path), name): case for path, parser in LEAVES
             for name, case in scenarios(path, parser, world).items()}
    with ThreadPoolExecutor(max_workers=6) as pool:
        return dict(zip(cases, pool.map(lambda case: run(*case), cases.values())))


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("path,parser", LEAVES, ids=[" ".join(path) for path, _ in LEAVES])
def test_no_traceback_on_bad_input(path: list[str], parser: argparse.ArgumentParser, outcomes) -> None:
    command = " ".join(path)
    results = {name: outcome for (leaf, name), outcome in outcomes.items() if leaf == command}
    assert results
    problems = []
    for name, (code, stdout, stderr) in results.items():
        where = f"cellmono {' '.join(path)} [{name}]"
        lines = [line for line in stderr.splitlines() if line.strip()]
        if "Traceback" in stderr or "Traceback" in stdout:
            problems.append(f"{where}: traceback\n{stderr[-1500:]}")
        elif code is None:
            continue  # a server that kept serving on defaults is not a crash; it printed no traceback
        elif code == 0 and command not in EXIT_ZERO_ALLOWED and (name != "empty folder" or takes_settings(parser)):
            problems.append(f"{where}: exit 0 on bad input\n{stdout[-300:]}{stderr[-300:]}")
        elif code != 0 and (not lines or not lines[-1].startswith("cellmono")):
            problems.append(f"{where}: exit {code} without a one-line 'cellmono...' error\n{stderr[-600:]}")
    assert not problems, "\n\n".join(problems)
