"""A small regenerable cell in a temporary git repository, for the GenOps tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cellmono.ops.regen_request import prices_sha256

MODEL = "local-fixture/test-writer-1"
SOURCE = "#| export\ndef greet(name: str) -> str:\n    return f'hello {name}'"


def answer(source: str = SOURCE, test: str = "assert greet('a') == 'hello a'") -> str:
    """A provider answer: the greeter notebook's cells as JSON."""
    return json.dumps({"cells": [{"type": "markdown", "source": "# greeter\n\n> Greets people by name."},
                                 {"type": "code", "source": "#| default_exp greeter"},
                                 {"type": "code", "source": source},
                                 {"type": "code", "source": test}]})


GATE = "{python} -c \"import sys; sys.path.insert(0, '{cell}'); import greeter; assert greeter.greet('a') == 'hello a'\""


def git(repo: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *arguments], capture_output=True, text=True, check=True).stdout


def make_repo(root: Path, *, per_run: float = 0.05, per_month: float = 1.0, gates: tuple[str, ...] = (GATE,),
              retries: int = 2, timeout: float = 5.0, repairs: int = 0, model: str | None = MODEL,
              price: bool = True) -> Path:
    """A git repository holding cell `cells/greeter` with its spec, policy and prices; returns the cell folder."""
    cell = root / "cells" / "greeter"
    (cell / "genops").mkdir(parents=True)
    (cell / "requirements.md").write_text("# greeter\n\n- **R1.** When asked with a name, the cell shall greet it.\n")
    pinned = f'model = "{model}"\n' if model else ""
    commands = ", ".join(json.dumps(command) for command in gates)
    (cell / "genops" / "policy.toml").write_text(
        f'provider = "local-fixture"\n{pinned}[params]\nmax_tokens = 1000\n'
        f"[budget]\nper_run_usd = {per_run}\nper_month_usd = {per_month}\n"
        f"[client]\ntimeout_s = {timeout}\nretries = {retries}\nbackoff_s = 0.01\n"
        f"[gates]\ncommands = [{commands}]\nmax_repair_attempts = {repairs}\n")
    models = {MODEL: {"input_per_mtok": 1.0, "output_per_mtok": 4.0}} if price else {}
    snapshot = {"source": "made up for tests", "models": models}
    (cell / "genops" / "prices.json").write_text(json.dumps({**snapshot, "sha256": prices_sha256(snapshot)}))
    (root / "settings.ini").write_text("[security]\naudit_path = var/audit.sqlite\n")
    (root / ".gitignore").write_text("var/\n__pycache__/\n")
    git(root, "init", "-q")
    git(root, "config", "user.name", "tester")
    git(root, "config", "user.email", "tester@example.invalid")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the greeter cell's spec")
    return cell


def tree_state(root: Path) -> dict[str, bytes]:
    """Every file under `root` outside .git and var/, with its bytes."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and ".git" not in path.parts and "var" not in path.parts
            and "__pycache__" not in path.parts}
