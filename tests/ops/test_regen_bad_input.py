"""Bad input to `cellmono regen`: a clear one-line error, exit 2, no traceback, no key, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellmono.cli.main import main
from tests.openai_fixture import FixtureServer
from tests.ops.regen_support import MODEL, answer, make_repo, tree_state


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return tmp_path


def refused(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> str:
    before = tree_state(root)
    code = main(["regen", *argv])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("cellmono: error: ") and captured.err.count("\n") == 1, captured.err
    assert tree_state(root) == before, "nothing is written"
    return captured.err


def test_unknown_cell(repo: Path, capsys) -> None:
    make_repo(repo)
    for command in ("plan", "run", "adopt"):
        assert "unknown cell 'nope'" in refused(capsys, repo, command, "nope")
    assert "regenerable cells here: greeter" in refused(capsys, repo, "verify", "nope")


def test_no_requirements(repo: Path, capsys) -> None:
    cell = make_repo(repo)
    (cell / "requirements.md").unlink()
    assert "no requirements.md" in refused(capsys, repo, "plan", "greeter")
    assert "no requirements.md" in refused(capsys, repo, "run", "greeter")


def test_no_pinned_model(repo: Path, capsys) -> None:
    make_repo(repo, model=None)
    assert "no pinned model" in refused(capsys, repo, "plan", "greeter")


def test_missing_price(repo: Path, capsys) -> None:
    make_repo(repo, price=False)
    assert f"no price for the pinned model '{MODEL}'" in refused(capsys, repo, "plan", "greeter")


def test_an_edited_price_snapshot(repo: Path, capsys) -> None:
    cell = make_repo(repo)
    prices = cell / "genops" / "prices.json"
    prices.write_text(prices.read_text().replace('"output_per_mtok": 4.0', '"output_per_mtok": 0.0'))
    assert "does not match its sha256" in refused(capsys, repo, "plan", "greeter")


def test_record_without_a_key(repo: Path, capsys, monkeypatch) -> None:
    make_repo(repo)
    with FixtureServer(answer(), MODEL) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        error = refused(capsys, repo, "run", "greeter", "--record")
        assert len(server.requests) == 0
    assert "needs an API key in $OPENAI_API_KEY" in error


def test_a_wrong_key_is_never_printed(repo: Path, capsys, monkeypatch) -> None:
    make_repo(repo)
    with FixtureServer(answer(), MODEL) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-secret-123")
        error = refused(capsys, repo, "run", "greeter", "--record")
    assert "HTTP 401" in error and "sk-wrong-secret-123" not in error


@pytest.mark.parametrize("script, content, message", [
    (["bad-json"], answer(), "not a chat completion in JSON"),
    ([], "this is not JSON", "answer is not JSON"),
    ([], json.dumps({"cells": [{"type": "code", "source": "def broken(:\n    pass"}]}), "does not parse"),
    ([], json.dumps({"notes": []}), "no 'cells' list"),
])
def test_invalid_answers_from_the_provider(repo: Path, capsys, monkeypatch, script, content, message) -> None:
    make_repo(repo)
    with FixtureServer(content, MODEL, script=script) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        error = refused(capsys, repo, "run", "greeter", "--record")
        assert len(server.requests) == 1
    assert message in error


def test_a_ledger_that_is_not_json_lines(repo: Path, capsys) -> None:
    cell = make_repo(repo)
    (cell / "genops" / "ledger.jsonl").write_text('{"id": 1}\n{oops\n')
    for command in ("plan", "run", "adopt"):
        assert "ledger.jsonl:2: not a JSON line" in refused(capsys, repo, command, "greeter")
    code = main(["regen", "verify"])
    out = capsys.readouterr().out
    assert code == 1 and "ledger.jsonl:2: not a JSON line" in out


def test_rollback_of_an_unknown_entry(repo: Path, capsys) -> None:
    make_repo(repo)
    assert "no ledger entry '7'" in refused(capsys, repo, "rollback", "greeter:7")
    assert "name it CELL:ID" in refused(capsys, repo, "rollback", "zz")


def test_without_the_extra_it_says_how_to_install_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = ("import sys; sys.modules['openai'] = None\n"  # as if the regen extra were not installed
              "from cellmono.cli.main import main; raise SystemExit(main(['regen', 'verify']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pip install 'cellmono[regen]'" in done.stderr
