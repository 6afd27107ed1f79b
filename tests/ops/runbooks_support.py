"""A fresh app (a clean copy of the example's settings and cells), the `cellmono runbook` CLI as a subprocess, and an
app serving runbooks as MCP tools with the keys and the official MCP client that call them."""

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
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "nbs" / "runbooks"
CLI = [str(Path(sys.executable).parent / "cellmono")]


def fresh_app(folder: Path) -> Path:
    """`folder` made into a clean copy of the example app on the embedded defaults; its settings file."""
    shutil.copy(ROOT / "settings.ini", folder / "settings.ini")
    shutil.copytree(ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return folder / "settings.ini"


def runbook_tool_app(folder: Path, expose: str, extra: str = "") -> Path:
    """A fresh app in `folder` with the runbooks cell exposing `expose`, roles `operator` (dry runs) and `applier`
    (dry runs, applying promote-cell and health-check), and `extra` lines in `[cell.runbooks]`; its settings file."""
    settings = fresh_app(folder)
    text = re.sub(r"^cells = (.*)$", r"cells = \1, runbooks", settings.read_text(), count=1, flags=re.MULTILINE)
    text = text.replace("[security]\n", "[security]\nrole.operator = tool:call:runbooks.*, runbook:run:*\n"
                        "role.applier = tool:call:runbooks.*, runbook:run:*, runbook:apply:promote-cell, "
                        "runbook:apply:health-check\n", 1)
    text = text.replace("[gateway]\n", "[gateway]\ncall_timeout = 300\n", 1)  # a run starts a kernel: seconds
    settings.write_text(text + "\n[cell.runbooks]\nclass = cellmono.ops.runbook_tool:RunbookToolCell\n"
                        f"expose = {expose}\nsettings = {settings}\n{extra}")
    return settings


def tool_keys(folder: Path) -> dict[str, str]:
    """API keys of the app in `folder`: one per role (admin, operator, applier, reader; principal `ROLE-user`) and
    `probe`, a reader key that health-check's `probe_key` authenticates."""
    from cellmono.gateway.auth import ApiKeys
    keys = ApiKeys(folder / "var" / "api-keys.json")
    made = {role: keys.create(f"{role}-user", [role]) for role in ("admin", "operator", "applier", "reader")}
    return made | {"probe": keys.create("probe", ["reader"])}


def mcp_client(url: str, key: str, mode: str = "2026-07-28", **callbacks: Any) -> Any:
    """The official MCP client on `url` with API `key` (a run starts a kernel: a long timeout), speaking `mode`."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(300.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode, cache=None, **callbacks)


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
