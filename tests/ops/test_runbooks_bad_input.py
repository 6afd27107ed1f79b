"""Bad input to `cellmono runbook`: one clear line, a non-zero exit, no traceback, nothing changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from runbooks_support import RUNBOOKS, audit_runs, cellmono, fresh_app, write_runbook


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def _nothing_ran(app: Path) -> None:
    assert not list((app / "var" / "runbooks").glob("*.ipynb")) if (app / "var" / "runbooks").exists() else True
    assert audit_runs(app) == []


def test_unknown_runbook(tmp_path: Path) -> None:
    fresh_app(tmp_path)
    done = cellmono("runbook", "run", "heal-check", "--cwd", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "no runbook named 'heal-check' (known: " in _one_line(done.stderr)
    _nothing_ran(tmp_path)


def test_unknown_and_ill_typed_parameters_are_refused_before_any_cell_runs(tmp_path: Path) -> None:
    fresh_app(tmp_path)
    for parameter, expected in (("colour=red", "has no parameter 'colour'"),
                                ("replicas=many", "parameter 'replicas': Input should be a valid integer"),
                                ("replicas=0", "parameter 'replicas': Input should be greater than or equal to 1"),
                                ("transport=kafka", "parameter 'transport': Input should be 'nats' or 'redis'")):
        done = cellmono("runbook", "run", "promote-cell", "-p", parameter, "--cwd", str(tmp_path), cwd=tmp_path)
        assert done.returncode == 2, parameter
        line = _one_line(done.stderr)
        assert expected in line, line
        assert parameter.split("=")[1] not in line.replace(expected, "").replace("'nats' or 'redis'", "")
    _nothing_ran(tmp_path)


def test_a_secret_value_is_refused_as_a_parameter_and_never_echoed(tmp_path: Path) -> None:
    fresh_app(tmp_path)
    done = cellmono("runbook", "run", "health-check", "-p", "probe_key=cm_live_SECRETVALUE", "--cwd", str(tmp_path),
                    cwd=tmp_path)
    assert done.returncode == 2
    assert "never the secret itself" in _one_line(done.stderr)
    assert "SECRETVALUE" not in done.stderr + done.stdout
    _nothing_ran(tmp_path)


def test_a_secret_reference_that_does_not_resolve_is_named(tmp_path: Path) -> None:
    fresh_app(tmp_path)
    done = cellmono("runbook", "run", "health-check", "-p", "probe_key=env:NO_SUCH_VARIABLE", "--cwd", str(tmp_path),
                    cwd=tmp_path)
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert "SecretUnresolved: secret reference 'env:NO_SUCH_VARIABLE' does not resolve" in line, line
    [run] = audit_runs(tmp_path)
    assert run["outcome"] == "error" and run["details"]["result"] == "failed"


def test_apply_without_a_dry_run_or_after_the_notebook_changed_is_refused(tmp_path: Path) -> None:
    settings = fresh_app(tmp_path)
    before = settings.read_text()
    done = cellmono("runbook", "run", "promote-cell", "--apply", "--cwd", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "--apply needs a successful dry run of the same notebook and parameters" in _one_line(done.stderr)
    folder = tmp_path / "books"
    shutil.copytree(RUNBOOKS, folder)
    assert cellmono("runbook", "run", "promote-cell", "--runbooks", str(folder), "--cwd", str(tmp_path),
                    cwd=tmp_path).returncode == 0
    changed = cellmono("runbook", "run", "promote-cell", "-p", "replicas=2", "--apply", "--runbooks", str(folder),
                       "--cwd", str(tmp_path), cwd=tmp_path)
    assert changed.returncode == 2, "other parameters than the dry run's"
    notebook = json.loads((folder / "promote-cell.ipynb").read_text())
    notebook["cells"][-1]["source"] = ["print('edited after review')"]
    (folder / "promote-cell.ipynb").write_text(json.dumps(notebook))
    edited = cellmono("runbook", "run", "promote-cell", "--apply", "--runbooks", str(folder), "--cwd", str(tmp_path),
                      cwd=tmp_path)
    assert edited.returncode == 2 and "dry run" in _one_line(edited.stderr)
    assert settings.read_text() == before
    assert [run["details"]["mode"] for run in audit_runs(tmp_path)] == ["dry-run"]


def test_a_runbook_failing_midway_is_archived_with_the_failing_cell_marked(tmp_path: Path) -> None:
    fresh_app(tmp_path)
    write_runbook(tmp_path, "half", [("print('step one ok')", []),
                                     ("raise RuntimeError('step two: the store is half rotated')", []),
                                     ("open('never.txt', 'w').write('x')", [])])
    done = cellmono("runbook", "run", "half", "--runbooks", str(tmp_path), "--cwd", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert "failed at cell 4: RuntimeError: step two: the store is half rotated (archive: " in line, line
    [archive] = (tmp_path / "var" / "runbooks").glob("*-half-*.ipynb")
    notebook = json.loads(archive.read_text())
    assert notebook["metadata"]["cellmono"]["result"] == "failed"
    marked = [cell for cell in notebook["cells"] if "papermill-error-cell-tag" in json.dumps(cell)]
    assert marked and "step one ok" in archive.read_text()
    assert not (tmp_path / "never.txt").exists()
    assert audit_runs(tmp_path)[0]["details"]["failed_cell"] == 4


def test_an_archive_folder_that_is_not_writable(tmp_path: Path) -> None:
    settings = fresh_app(tmp_path)
    settings.write_text(settings.read_text() + "\n[runbooks]\narchive = blocked/runs\n")
    (tmp_path / "blocked").write_text("a file where the archive folder should be")
    done = cellmono("runbook", "run", "health-check", "--cwd", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "is not writable" in _one_line(done.stderr) and "nothing was run" in done.stderr
    assert audit_runs(tmp_path) == []


def test_a_kernel_that_dies(tmp_path: Path) -> None:
    fresh_app(tmp_path)
    write_runbook(tmp_path, "crash", [("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", [])])
    done = cellmono("runbook", "run", "crash", "--runbooks", str(tmp_path), "--cwd", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1
    assert "the kernel died" in _one_line(done.stderr)
    [archive] = (tmp_path / "var" / "runbooks").glob("*-crash-*.ipynb")
    assert "This run failed" in archive.read_text()
    assert audit_runs(tmp_path)[0]["details"]["result"] == "failed"
