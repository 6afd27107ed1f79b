"""GenOps end to end: the real `openai` SDK against a real local chat-completions server, the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cellmono.cli.main import main
from cellmono.ops.regen_request import find_cell, plan_cell
from tests.openai_fixture import FixtureServer
from tests.ops.regen_support import GATE, MODEL, answer, git, make_repo, tree_state

KEY = "sk-fixture-key"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CI", raising=False)  # these tests record; CI allows only replay (tested below)
    return tmp_path


def regen(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["regen", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def record(server: FixtureServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
           cell: str = "greeter") -> tuple[int, str, str]:
    monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    return regen(capsys, "run", cell, "--record")


def test_record_gate_adopt_verify(repo: Path, monkeypatch, capsys) -> None:
    cell = make_repo(repo)
    with FixtureServer(answer(), MODEL) as server:
        code, out, err = record(server, monkeypatch, capsys)
    assert (code, err) == (0, ""), err
    assert len(server.requests) == 1 and "gates passed" in out and "# Semantic diff: greeter" in out
    assert {k.lower(): v for k, v in server.headers[0].items()}["authorization"] == f"Bearer {KEY}"
    entry = json.loads((cell / "genops" / "ledger.jsonl").read_text())
    assert (entry["provider"], entry["model_returned"], entry["gates"]["passed"]) == ("local-fixture", MODEL, True)
    assert KEY not in "".join(path.read_text() for path in (cell / "genops").rglob("*") if path.is_file())
    assert "def greet" in (cell / "greeter.py").read_text()
    code, out, _ = regen(capsys, "adopt", "greeter")
    assert code == 0 and "adopted greeter: ledger entry 1" in out
    message = git(repo, "log", "-1", "--format=%B")
    assert f"GenOps-Ledger: {entry['sha256']}" in message and f"GenOps-Model: {MODEL}" in message
    assert "GenOps-Cost-USD: " in message
    assert git(repo, "status", "--porcelain") == ""
    assert regen(capsys, "verify")[0] == 0


def test_budget_refusal_happens_before_any_request(repo: Path, monkeypatch, capsys) -> None:
    make_repo(repo, per_run=0.001)
    before = tree_state(repo)
    with FixtureServer(answer(), MODEL) as server:
        code, _, err = record(server, monkeypatch, capsys)
        assert len(server.requests) == 0
    assert code == 2 and "refused before the call" in err and "per-run budget" in err
    assert regen(capsys, "plan", "greeter")[0] == 2
    assert tree_state(repo) == before


def test_month_to_date_budget_counts_the_ledger(repo: Path, monkeypatch, capsys) -> None:
    cell = make_repo(repo)
    worst = plan_cell(find_cell("greeter")).worst_case_usd  # the first call fits the month, the second cannot
    policy = cell / "genops" / "policy.toml"
    policy.write_text(policy.read_text().replace("per_month_usd = 1.0", f"per_month_usd = {worst + 0.0001}"))
    with FixtureServer(answer(), MODEL) as server:
        assert record(server, monkeypatch, capsys)[0] == 0
        (cell / "requirements.md").write_text("# greeter\n\n- **R1.** The cell shall greet by full name.\n")
        code, _, err = record(server, monkeypatch, capsys)
        assert len(server.requests) == 1
    assert code == 2 and "monthly budget" in err


def test_a_wrong_model_is_refused_and_nothing_is_written(repo: Path, monkeypatch, capsys) -> None:
    make_repo(repo)
    before = tree_state(repo)
    with FixtureServer(answer(), MODEL, script=["wrong-model"]) as server:
        code, _, err = record(server, monkeypatch, capsys)
    assert code == 2 and "'some-other-model', not the pinned" in err
    assert tree_state(repo) == before


def test_replay_rebuilds_byte_identical_offline(repo: Path, monkeypatch, capsys, tmp_path_factory) -> None:
    cell = make_repo(repo)
    with FixtureServer(answer(), MODEL) as server:
        assert record(server, monkeypatch, capsys)[0] == 0
    recorded = (cell / "greeter.ipynb").read_bytes(), (cell / "greeter.py").read_bytes()
    other = tmp_path_factory.mktemp("clone")  # a second repository with the same spec and the recorded response
    other_cell = make_repo(other)
    shutil.copytree(cell / "genops" / "responses", other_cell / "genops" / "responses")
    monkeypatch.chdir(other)
    monkeypatch.delenv("OPENAI_BASE_URL")
    code, out, err = regen(capsys, "run", "greeter")  # replay is the default: no server is running
    assert (code, err) == (0, "")
    assert ((other_cell / "greeter.ipynb").read_bytes(), (other_cell / "greeter.py").read_bytes()) == recorded
    code, out, _ = regen(capsys, "run", "greeter", "--replay")
    assert code == 0 and "up to date" in out


def test_hand_edit_and_ledger_edit_are_caught(repo: Path, monkeypatch, capsys) -> None:
    cell = make_repo(repo)
    with FixtureServer(answer(), MODEL) as server:
        assert record(server, monkeypatch, capsys)[0] == 0
    assert regen(capsys, "adopt", "greeter")[0] == 0
    notebook = cell / "greeter.ipynb"
    original = notebook.read_bytes()
    notebook.write_bytes(original.replace(b"hello", b"howdy"))
    code, out, _ = regen(capsys, "verify")
    assert code == 1 and "edited by hand" in out
    notebook.write_bytes(original)
    ledger = cell / "genops" / "ledger.jsonl"
    ledger.write_text(ledger.read_text().replace('"passed":true', '"passed":false'))
    code, out, _ = regen(capsys, "verify")
    assert code == 1 and "edited" in out
    git(repo, "checkout", "--", ".")
    (cell / "requirements.md").write_text("# greeter\n\n- **R1.** The cell shall greet loudly.\n")
    code, out, _ = regen(capsys, "verify")
    assert code == 1 and "stale: requirements.md changed" in out


def test_an_api_break_fails_the_gate_and_nothing_lands(repo: Path, monkeypatch, capsys) -> None:
    cell = make_repo(repo, gates=())
    with FixtureServer(answer(), MODEL) as server:
        assert record(server, monkeypatch, capsys)[0] == 0
    assert regen(capsys, "adopt", "greeter")[0] == 0
    (cell / "requirements.md").write_text("# greeter\n\n- **R1.** The cell shall welcome people.\n")
    git(repo, "commit", "-qam", "spec change")
    before = tree_state(repo)
    renamed = answer("#| export\ndef welcome(name: str) -> str:\n    return f'hello {name}'", "assert welcome('a')")
    with FixtureServer(renamed, MODEL) as server:
        code, out, _ = record(server, monkeypatch, capsys)
    assert code == 1 and "BREAKING" in out and "greet" in out
    after = tree_state(repo)
    ledger = "cells/greeter/genops/ledger.jsonl"
    assert {name: data for name, data in after.items() if "genops" not in name} == \
        {name: data for name, data in before.items() if "genops" not in name}
    assert json.loads(after[ledger].splitlines()[-1])["gates"]["passed"] is False  # the spend is recorded


def test_a_failing_gate_leaves_the_tree_unchanged_after_repairs(repo: Path, monkeypatch, capsys) -> None:
    cell = make_repo(repo, gates=(GATE, "{python} -c \"raise SystemExit(7)\""), repairs=1)
    with FixtureServer(answer(), MODEL) as server:
        code, out, _ = record(server, monkeypatch, capsys)
        assert len(server.requests) == 2  # the first try and one repair attempt, told what failed
        assert "exited 7" in server.requests[1]["messages"][-1]["content"]
    assert code == 1 and "gates failed" in out and "nothing landed" in out
    assert not (cell / "greeter.ipynb").exists() and not (cell / "greeter.py").exists()
    entries = [json.loads(line) for line in (cell / "genops" / "ledger.jsonl").read_text().splitlines()]
    assert [(entry["attempt"], entry["gates"]["passed"]) for entry in entries] == [(1, False), (2, False)]
    assert entries[1]["month_to_date_usd"] == round(entries[0]["cost_usd"] + entries[1]["cost_usd"], 6)
    assert git(repo, "worktree", "list").count("\n") == 1


def test_a_changed_prompt_forces_a_new_recording(repo: Path, monkeypatch, capsys) -> None:
    cell = make_repo(repo)
    with FixtureServer(answer(), MODEL) as server:
        assert record(server, monkeypatch, capsys)[0] == 0
    (cell / "genops" / "template.md").write_text("Write the cell {name} as JSON cells; module {module}.\n")
    code, _, err = regen(capsys, "run", "greeter")
    assert code == 2 and "no recorded response" in err and "--record" in err
    code, out, _ = regen(capsys, "verify")
    assert code == 1 and "stale: the prompt template changed" in out


@pytest.mark.parametrize("script, recovers", [([429, 500], True), ([500, 500, 500], False), ([429, 429, 429], False)])
def test_429_and_500_are_retried_then_a_clear_error(repo: Path, monkeypatch, capsys, script, recovers) -> None:
    cell = make_repo(repo, retries=2)
    with FixtureServer(answer(), MODEL, script=list(script)) as server:
        code, _, err = record(server, monkeypatch, capsys)
        assert len(server.requests) == 3
    if recovers:
        assert code == 0 and (cell / "greeter.ipynb").exists()
    else:
        assert code == 2 and f"failed 3 times (last: HTTP {script[-1]})" in err and "Traceback" not in err
        assert not (cell / "genops" / "ledger.jsonl").exists()


def test_timeouts_are_retried_within_the_budget(repo: Path, monkeypatch, capsys) -> None:
    # each timed-out call may have been billed: its worst case (~$0.0045 here) counts against the per-run $0.012
    make_repo(repo, retries=5, timeout=0.5, per_run=0.012)
    with FixtureServer(answer(), MODEL, script=["timeout"] * 6, delay=1.5) as server:
        code, _, err = record(server, monkeypatch, capsys)
        assert len(server.requests) == 2
    assert code == 2 and "per-run budget" in err


def test_ci_allows_only_replay(repo: Path, monkeypatch, capsys) -> None:
    make_repo(repo)
    monkeypatch.setenv("CI", "true")
    with FixtureServer(answer(), MODEL) as server:
        code, _, err = record(server, monkeypatch, capsys)
        assert len(server.requests) == 0
    assert code == 2 and "CI allows only --replay" in err


def test_rollback_restores_and_appends(repo: Path, monkeypatch, capsys) -> None:
    cell = make_repo(repo, gates=())
    with FixtureServer(answer(), MODEL) as server:
        assert record(server, monkeypatch, capsys)[0] == 0
    assert regen(capsys, "adopt", "greeter")[0] == 0
    first = (cell / "greeter.ipynb").read_bytes()
    (cell / "requirements.md").write_text("# greeter\n\n- **R1.** The cell shall greet twice.\n")
    git(repo, "commit", "-qam", "spec change")
    twice = answer("#| export\ndef greet(name: str) -> str:\n    return f'hello {name} ' * 2")
    with FixtureServer(twice, MODEL) as server:
        assert record(server, monkeypatch, capsys)[0] == 0
    assert regen(capsys, "adopt", "greeter")[0] == 0
    code, out, _ = regen(capsys, "rollback", "greeter:2")
    assert code == 0 and "rolled greeter back before entry 2" in out
    assert (cell / "greeter.ipynb").read_bytes() == first
    kinds = [json.loads(line)["kind"] for line in (cell / "genops" / "ledger.jsonl").read_text().splitlines()]
    assert kinds == ["generation", "generation", "rollback"]
    assert regen(capsys, "verify")[0] == 0


def test_every_operation_lands_in_the_audit_log(repo: Path, monkeypatch, capsys) -> None:
    make_repo(repo, gates=())
    with FixtureServer(answer(), MODEL) as server:
        assert record(server, monkeypatch, capsys)[0] == 0
    assert regen(capsys, "adopt", "greeter")[0] == 0
    assert main(["audit", "verify", "--settings", "settings.ini"]) == 0
    main(["audit", "tail", "--settings", "settings.ini"])
    tail = capsys.readouterr().out
    assert '"regen.run"' in tail and '"regen.adopt"' in tail and KEY not in tail
