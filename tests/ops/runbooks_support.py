"""A fresh app (a clean copy of the example's settings and cells) and the `cellmono runbook` CLI as a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "nbs" / "runbooks"
CLI = [str(Path(sys.executable).parent / "cellmono")]


def fresh_app(folder: Path) -> Path:
    """`folder` made into a clean copy of the example app on the embedded defaults; its settings file."""
    shutil.copy(ROOT / "settings.ini", folder / "settings.ini")
    shutil.copytree(ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return folder / "settings.ini"


def cellmono(*arguments: str, cwd: Path, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `cellmono ARGUMENTS` in `cwd` (not a TTY), capturing its output."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    environment.pop("CELLMONO_KEK", None)
    return subprocess.run([*CLI, *arguments], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def audit_runs(app: Path) -> list[dict]:
    """The runbook runs in the app's audit log, as `cellmono runbook history` reads them."""
    from cellmono.ops.runbook_runner import history
    return history(app / "settings.ini")


def write_runbook(folder: Path, name: str, steps: list[tuple[str, list[str]]]) -> Path:
    """A minimal runbook `name` in `folder` with these code steps (source, tags)."""
    def cell(kind: str, text: str, tags: list[str] | None = None) -> dict:
        extra = {"outputs": [], "execution_count": None} if kind == "code" else {}
        return {"cell_type": kind, "id": f"c{abs(hash(text)) % 10**8}", "metadata": {"tags": tags or []},
                "source": text, **extra}
    cells = [cell("markdown", f"# Runbook: {name}\n\n> Test runbook.\n\n## When to use\n\nIn tests."),
             cell("code", "from pydantic import BaseModel, ConfigDict\nclass Parameters(BaseModel):\n"
                  "    model_config = ConfigDict(extra='forbid')\n    n: int = 1\n"
                  "runbook_parameters, runbook_mode, runbook_settings = '{}', 'dry-run', 'settings.ini'",
                  ["parameters"])]
    cells += [cell("code", source, tags) for source, tags in steps]
    path = folder / f"{name}.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


@contextlib.contextmanager
def serve_app(folder: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`cellmono serve --port 0` run in the app `folder` (its state in its own var/); its URL; stopped with SIGTERM."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CELLMONO__LOG__LEVEL": "WARNING", **(env or {})}
    environment.pop("CELLMONO_KEK", None)
    process = subprocess.Popen([*CLI, "serve", "--port", "0"], cwd=folder, env=environment, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        output, url, deadline = [], None, time.monotonic() + 60
        while time.monotonic() < deadline and url is None:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            url = found.group(1) if found else None
        assert url is not None, "cellmono serve did not start:\n" + "".join(output)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
