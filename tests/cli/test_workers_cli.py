"""`cellmono workers` and `cellmono worker --credential` as an operator runs them: one line and exit 2 on every
mistake, never a secret or a traceback; the systemd unit starts a worker from its credential alone."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cellmono.cli.main import build_parser

CELLMONO = str(Path(sys.executable).parent / "cellmono")
DEPLOY = Path(__file__).resolve().parents[2] / "examples" / "deploy"


def run(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CELLMONO, *arguments], cwd=cwd, capture_output=True, text=True, timeout=60)


def one_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in result.stderr for word in words), result.stderr


def test_operator_mistakes_are_one_line(tmp_path) -> None:
    (tmp_path / "settings.ini").write_text("[app]\ncells = \n")
    one_line(run("workers", "revoke", "nope", cwd=tmp_path), "no provisioned worker 'nope'")
    one_line(run("workers", "provision", "Bad/Name", cwd=tmp_path), "worker name")
    one_line(run("workers", "provision", "w1", cwd=tmp_path), "needs a NATS broker")
    one_line(run("worker", "--credential", "missing.credential", cwd=tmp_path), "no such credential file")
    loose = tmp_path / "loose.credential"
    loose.write_text(json.dumps({"cellmono_worker_credential": 1}))
    loose.chmod(0o644)  # readable by others: a leaked secret is refused, as ssh refuses a loose key
    one_line(run("worker", "--credential", str(loose), cwd=tmp_path), "chmod 600")
    loose.chmod(0o600)
    one_line(run("worker", "--credential", str(loose), cwd=tmp_path), "not a cellmono worker credential")
    assert "no provisioned workers" in run("workers", "list", cwd=tmp_path).stdout


def test_the_systemd_unit_starts_a_worker_from_its_credential() -> None:
    unit = (DEPLOY / "systemd" / "cellmono-worker@.service").read_text()
    assert "cellmono worker --credential /etc/cellmono/workers/%i.credential" in unit
    parsed = build_parser(["worker"]).parse_args(["worker", "--credential", "/etc/cellmono/workers/w1.credential"])
    assert parsed.credential.endswith("w1.credential") and parsed.cell is None
