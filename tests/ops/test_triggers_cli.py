"""`cellmono triggers` end to end: a trace recorded by the controller's own sampler replays to the same decisions,
the audit log the controller wrote explains them, and bad input gets one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio

from cellmono.ops.controller import MemoryMover, TriggerController
from cellmono.ops.signals import Sample, TraceHeader, TraceRecord, TriggerConfig, TriggerSettings, read_trace, write_trace
from cellmono.ops.triggers import replay
from cellmono.security.audit import AuditLog

SETTINGS = TriggerSettings(interval=0.001, up_delay=0.003, down_delay=0.01, down_window=0.004, cooldown=0.005,
                           dwell=0.02, mode="promote")
CPU = [0.2] * 5 + [0.95] * 30 + [0.1] * 60


def cellmono(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "cellmono"), *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def controller_run(folder: Path) -> tuple[list[str], Path]:
    """Run the controller on a fake sampler with a real audit log, recording what it sampled as a trace."""
    recorded: list[TraceRecord] = []
    series = iter(CPU)

    def sampler() -> dict[str, Sample]:
        tick = len(recorded)
        sample = Sample(cell="search", at=SETTINGS.interval * tick, cpu_ratio=next(series))
        recorded.append(TraceRecord(tick=tick, sample=sample))
        return {"search": sample}

    mover = MemoryMover()
    with AuditLog(folder / "audit.sqlite") as log:
        controller = TriggerController(sampler, TriggerConfig(default=SETTINGS), audit=log, mover=mover)
        anyio.run(controller.run, len(CPU))
        assert log.verify().ok
    write_trace(folder / "trace.jsonl", TraceHeader(interval=SETTINGS.interval, app="test"), recorded)
    return [f"{d.tick} {d.action}" for d in mover.moves], folder / "trace.jsonl"


def test_a_recorded_trace_replays_to_the_moves_the_controller_made(tmp_path: Path) -> None:
    moves, trace = controller_run(tmp_path)
    assert moves and moves[0].endswith("promote") and moves[-1].endswith("demote")
    replayed = [f"{d.tick} {d.action}" for d in replay(read_trace(trace).records, TriggerConfig(default=SETTINGS))
                if d.moves]
    assert replayed == moves
    (tmp_path / "settings.ini").write_text(
        "[triggers]\nup_delay = 0.003\ndown_delay = 0.01\ndown_window = 0.004\ncooldown = 0.005\ndwell = 0.02\n")
    done = cellmono("triggers", "simulate", str(trace), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = [" ".join(line.split()[1:4:2]) for line in done.stdout.splitlines() if "->" in line]
    assert printed == moves


def test_explain_reads_the_controllers_audit_log(tmp_path: Path) -> None:
    moves, _ = controller_run(tmp_path)
    (tmp_path / "settings.ini").write_text("[security]\naudit_path = audit.sqlite\n")
    done = cellmono("triggers", "explain", "search", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"search: demote at tick {moves[-1].split()[0]} (promote mode, acted on)")
    assert "what would have happened: if not acted on: stays 1 worker replica" in done.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("# not a trace\n")
    (tmp_path / "bad.ini").write_text("[triggers]\ncpu_enter = 0.5\ncpu_exit = 0.6\n")
    write_trace(tmp_path / "t.jsonl", TraceHeader(interval=15), [])
    for argv, expected in [
            (("simulate", "notes.md"), "notes.md line 1: not a trace"),
            (("simulate", "missing.jsonl"), "no such trace file"),
            (("simulate", "t.jsonl", "--settings", "bad.ini"), "cpu_exit (0.6) must be below cpu_enter (0.5)"),
            (("explain", "search", "--db", "none.sqlite"), "does not exist"),
            (("record",), "the following arguments are required: TRACE.jsonl"),
            (("record", "t.jsonl"), "t.jsonl exists: name a new file, or --force"),
            (("record", "new.jsonl", "--seconds", "-1"), "--seconds -1: expected 0 to 86400"),
            (("status",), "'cellmono triggers status' needs an operator API key"),
            (("record", "new.jsonl", "--key", "cmk_x"), "settings.ini: settings file not found"),
            (("record", "new.jsonl", "--key", "cmk_x", "--settings", "bad.ini"), "no running app answers at")]:
        done = cellmono("triggers", *argv, cwd=tmp_path)
        assert (done.returncode, done.stdout) == (2, ""), (argv, done.stdout, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and expected in done.stderr, (argv, done.stderr)
