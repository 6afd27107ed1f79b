"""Approval tokens for `--apply` (issue 15 §3): a runbook the app lists in `[runbooks] approval` applies only with a
token from `cellmono runbook approve`, bound to the dry run's content hash and signed by the app's ring; forged,
foreign, stale, expired, reused tokens and approvers without `runbook:approve:NAME` are refused in one line."""

from __future__ import annotations

import time
from pathlib import Path

from cellmono.gateway.auth import ApiKeys
from cellmono.ops.runbook_runner import approval_audience
from cellmono.ops.runbooks import content_hash, load_runbook, validate_parameters
from cellmono.security.signing import SigningKeys
from cellmono.security.tokens import TokenIssuer

from runbooks_support import RUNBOOKS, audit_runs, cellmono, fresh_app

NAME = "promote-cell"


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def _app(folder: Path) -> tuple[Path, str, str]:
    settings = fresh_app(folder)
    text = settings.read_text().replace("[security]\n", f"[security]\nrole.approver = runbook:approve:{NAME}\n", 1)
    settings.write_text(text + f"\n[runbooks]\napproval = {NAME}\n")
    keys = ApiKeys(folder / "var" / "api-keys.json")
    return settings, keys.create("boss", ["approver"]), keys.create("clerk", ["reader"])


def _apply(folder: Path, token: str | None, *parameters: str):
    extra = ["--approval", token] if token is not None else []
    return cellmono("runbook", "run", NAME, *parameters, "--apply", *extra, "--cwd", str(folder), cwd=folder)


def test_apply_needs_an_approval_bound_to_the_dry_run_and_used_once(tmp_path: Path) -> None:
    settings, boss, clerk = _app(tmp_path)
    before = settings.read_text()
    assert cellmono("runbook", "run", NAME, "--cwd", str(tmp_path), cwd=tmp_path).returncode == 0
    missing = _apply(tmp_path, None)
    assert missing.returncode == 2 and "requires approval" in _one_line(missing.stderr)
    refused = cellmono("runbook", "approve", NAME, "--key", clerk, "--cwd", str(tmp_path), cwd=tmp_path)
    assert refused.returncode == 2 and "clerk (roles reader) lacks runbook:approve:promote-cell" in _one_line(refused.stderr)
    not_rehearsed = cellmono("runbook", "approve", NAME, "-p", "replicas=3", "--key", boss, "--cwd", str(tmp_path),
                             cwd=tmp_path)
    assert not_rehearsed.returncode == 2 and "no successful dry run" in _one_line(not_rehearsed.stderr)
    approved = cellmono("runbook", "approve", NAME, "--key", boss, "--cwd", str(tmp_path), cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr
    token = approved.stdout.strip()
    assert boss not in approved.stdout + approved.stderr
    forged = token[:40] + ("A" if token[40] != "A" else "B") + token[41:]
    assert "approval token refused" in _one_line(_apply(tmp_path, forged).stderr)
    other = _apply(tmp_path, token, "-p", "replicas=2")  # another content hash: needs its own dry run first
    assert other.returncode == 2
    assert settings.read_text() == before, "a refused apply changed the settings"
    done = _apply(tmp_path, token)
    assert done.returncode == 0, done.stderr
    assert settings.read_text() != before
    assert audit_runs(tmp_path)[-1]["details"]["approved_by"] == "boss"
    again = _apply(tmp_path, token)
    assert again.returncode == 2 and "used already" in _one_line(again.stderr)


def test_foreign_stale_and_expired_tokens_are_refused(tmp_path: Path) -> None:
    settings, boss, _ = _app(tmp_path)
    ring = SigningKeys.load_or_create(tmp_path / "var" / "signing-keys.json")  # the app's, as `cellmono serve` makes it
    runbook = load_runbook(RUNBOOKS / f"{NAME}.ipynb")
    digest = content_hash(runbook, validate_parameters(runbook, {}))
    for parameters in ([], ["-p", "replicas=2"]):
        assert cellmono("runbook", "run", NAME, *parameters, "--cwd", str(tmp_path), cwd=tmp_path).returncode == 0
    before = settings.read_text()
    foreign = TokenIssuer(SigningKeys.load_or_create(tmp_path / "other-app-keys.json")).issue(
        "boss", [f"runbook:approve:{NAME}"], approval_audience(NAME, digest))
    line = _one_line(_apply(tmp_path, foreign).stderr)
    assert "approval token refused: token signed by unknown or retired key id" in line, line
    stale = cellmono("runbook", "approve", NAME, "-p", "replicas=2", "--key", boss, "--cwd", str(tmp_path), cwd=tmp_path)
    assert stale.returncode == 0, stale.stderr
    line = _one_line(_apply(tmp_path, stale.stdout.strip()).stderr)
    assert "it approves another runbook or another content hash" in line, line
    expired = TokenIssuer(ring, clock=lambda: time.time() - 7200).issue(
        "boss", [f"runbook:approve:{NAME}"], approval_audience(NAME, digest), ttl=60)
    assert "expired" in _one_line(_apply(tmp_path, expired).stderr)
    gateway = TokenIssuer(ring).issue("boss", ["*:*"], "cellmono")  # an ordinary access token of the same app
    assert "another runbook or another content hash" in _one_line(_apply(tmp_path, gateway).stderr)
    not_granted = TokenIssuer(ring).issue("boss", ["notes:read"], approval_audience(NAME, digest))
    assert "does not grant runbook:approve:promote-cell" in _one_line(_apply(tmp_path, not_granted).stderr)
    assert settings.read_text() == before
    assert [run["details"]["mode"] for run in audit_runs(tmp_path)] == ["dry-run", "dry-run"]
