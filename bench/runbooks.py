"""Benchmark of the runbook runner: its overhead against bare papermill on the same notebook, backup + restore of
a store through the runbooks against SQLite's own online backup + a file copy, and how many runbooks dry-run on a
fresh app. Last stdout line: one JSON object.

What `backup_restore_ratio` compares, like against like:
- the baseline, timed in this process: `Connection.backup` of the live store into a fresh file (SQLite's defaults,
  so it syncs) and `shutil.copy` of that file: a backup and a restore with no checks at all;
- the runbooks, timed by the kernel's own clock (from its 'busy' status to its execute reply, per cell) over the
  cells of their steps and verifications, in `--apply` runs: backup-store's online backup (also durable: one fsync,
  then an atomic rename), its integrity check and SHA-256 manifest; restore-store's copy, its SHA-256 check against
  the manifest and the authentication (AES-GCM decryption) of every restored item with the app's key, in one scan
  (`EncryptedStore.verify_all`).
Left out of the ratio, since the baseline has none of them: the kernel start, imports and the set-up cell (the
runner's overhead, `overhead_s`), papermill's per-cell round trip, and the dry runs that must precede an apply.
Rounds interleave the two sides on the same store: each round samples the baseline before, between and after the
two applies and divides the runbooks' work by the median of its own samples, so a load spike lands on both sides of
that round; `backup_restore_ratio` is the median of the rounds' ratios (all listed in `backup_restore_ratios`), so
one noisy round cannot fail it (5 rounds; `--quick` runs 2, each still the median of its own 3 baseline samples).
`dry_runs_ok` counts the runbooks whose dry run passed out of `dry_runs_run` tried: all of them, or every third one
with `--quick` (whose target is then that all tried passed). The dry runs are pass/fail, not timed: with `--quick` they
run beside the backup/restore rounds (whose ratio compares both sides under the same load), so the whole quick run
takes about a minute (`wall_s`); a full run keeps every phase on its own.
Usage: python bench/runbooks.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cellmono.ops.runbook_runner import run_runbook  # noqa: E402
from cellmono.ops.runbooks import app_security, find_runbooks, load_runbook, validate_parameters  # noqa: E402
from cellmono.security.store import open_store  # noqa: E402

TARGETS = {"overhead_s": ("<=", 2.0), "backup_restore_ratio": ("<=", 2.0), "dry_runs_ok": (">=", 8)}
CLI = str(Path(sys.executable).parent / "cellmono")


def fresh_app(folder: Path) -> Path:
    shutil.copy(ROOT / "settings.ini", folder / "settings.ini")
    shutil.copytree(ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return folder / "settings.ini"


def trivial_runbook(folder: Path) -> Path:
    cells = [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# Runbook: noop\n\n> Nothing.\n\n"
              "## When to use\n\nIn the benchmark."},
             {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "outputs": [], "execution_count": None,
              "source": "from pydantic import BaseModel, ConfigDict\nclass Parameters(BaseModel):\n"
                        "    model_config = ConfigDict(extra='forbid')\n    n: int = 1\n"
                        "runbook_parameters, runbook_mode, runbook_settings = '{}', 'dry-run', 'settings.ini'"},
             {"cell_type": "code", "id": "s", "metadata": {}, "outputs": [], "execution_count": None,
              "source": "print(sum(range(1000)))"}]
    path = folder / "noop.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                                                            "display_name": "Python 3"}},
                                "nbformat": 4, "nbformat_minor": 5}))
    return path


def overhead(rounds: int) -> tuple[float | None, float | None, float | None]:
    """Bare papermill and the runner on the same trivial notebook, alternated; medians (None when no round ran)."""
    import papermill
    with tempfile.TemporaryDirectory() as folder:
        app = Path(folder)
        fresh_app(app)
        path = trivial_runbook(app)
        runbook = load_runbook(path)
        bare, runner = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            papermill.execute_notebook(str(path), str(app / "out.ipynb"), parameters={"n": 1}, kernel_name="python3",
                                       progress_bar=False, cwd=folder)
            bare.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = run_runbook(runbook, validate_parameters(runbook, {}), settings=app / "settings.ini")
            if not result.ok:
                print(f"runner failed ({result.error}): overhead round dropped", file=sys.stderr)
                bare.pop()
                continue
            runner.append(time.perf_counter() - started)
    if not runner:
        return None, None, None
    return statistics.median(runner) - statistics.median(bare), statistics.median(bare), statistics.median(runner)


def _kernel_seconds(cell: dict) -> float:
    """How long the kernel itself ran the cell, by its own clock: from its 'busy' status to its execute reply.

    papermill's `duration` also counts the client's round trip and its notebook save before each cell (runner
    overhead, which `overhead_s` measures); the baseline has neither, so the ratio leaves them out."""
    timing = cell.get("metadata", {}).get("execution", {})
    if "iopub.status.busy" in timing and "shell.execute_reply" in timing:
        busy, reply = (datetime.fromisoformat(timing[key].replace("Z", "+00:00"))
                       for key in ("iopub.status.busy", "shell.execute_reply"))
        return (reply - busy).total_seconds()
    return float(cell.get("metadata", {}).get("papermill", {}).get("duration") or 0.0)


def step_seconds(archive: Path) -> float:
    """Seconds the kernel spent in the runbook's step and verification cells (not its set-up and imports)."""
    notebook = json.loads(archive.read_text())
    total, heading = 0.0, ""
    for cell in notebook["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown":
            heading = ([line for line in source.splitlines() if line.startswith("#")] or [heading])[-1]
        elif cell["cell_type"] == "code" and ("Step" in heading or "Verification" in heading):
            total += _kernel_seconds(cell)
    return total


def baseline_backup_copy(store: Path, folder: Path) -> tuple[float, float]:
    """SQLite's own online backup of `store` into a fresh file, then a copy of that file: (backup s, copy s)."""
    backup, restored = folder / "baseline.sqlite", folder / "baseline-restored.sqlite"
    backup.unlink(missing_ok=True)
    restored.unlink(missing_ok=True)
    started = time.perf_counter()
    with sqlite3.connect(store) as source, sqlite3.connect(backup) as copy:
        source.backup(copy)
    copied = time.perf_counter()
    shutil.copy(backup, restored)
    return copied - started, time.perf_counter() - copied


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def backup_restore(megabytes: int, rounds: int) -> dict[str, float | int | None]:
    """Interleaved rounds on the same store: the baseline before, between and after the two runbooks' applies, so a
    load spike hits both sides alike; each round's ratio is its runbook work over its median baseline, and the figure
    is the median of the rounds' ratios (one noisy round cannot move it). A failed run drops its round, never crashes."""
    with tempfile.TemporaryDirectory() as folder:
        app = Path(folder)
        settings = fresh_app(app)
        security = app_security(settings)
        Path(security.store_path).parent.mkdir(parents=True)
        value = os.urandom(64 * 1024)
        with open_store(security, create_key_file=True) as store:
            for number in range(megabytes * 16):
                store.put("blobs", f"blob-{number}", value)
        size = Path(security.store_path).stat().st_size
        books = {name: load_runbook(find_runbooks()[name]) for name in ("backup-store", "restore-store")}
        parameters = {name: validate_parameters(book, {}) for name, book in books.items()}
        for name, book in books.items():  # the dry runs that allow the applies (same content hash for every round)
            if not run_runbook(book, parameters[name], settings=settings).ok:
                print(f"dry run of {name} failed: no backup/restore figure", file=sys.stderr)
                return {"store_mb": round(size / 2**20, 1), "rounds": 0, "backup_restore_ratio": None}
        baselines, ratios, steps, end_to_end = [], [], [], []
        for _ in range(rounds):
            samples = [sum(baseline_backup_copy(Path(security.store_path), app))]
            shutil.rmtree(app / "var" / "restored", ignore_errors=True)  # restore-store wants a fresh folder
            seconds, started = {}, time.perf_counter()
            for name, book in books.items():
                result = run_runbook(book, parameters[name], mode="apply", settings=settings)
                if not result.ok:
                    print(f"{name} --apply failed ({result.error}): round dropped", file=sys.stderr)
                    break
                seconds[name] = step_seconds(result.archive)
                samples.append(sum(baseline_backup_copy(Path(security.store_path), app)))
            else:
                end_to_end.append(time.perf_counter() - started)
                baseline = statistics.median(samples)
                baselines.append(baseline)
                ratios.append(sum(seconds.values()) / baseline if baseline > 0 else float("inf"))
                steps.append(seconds)
    return {"store_mb": round(size / 2**20, 1), "rounds": len(ratios),
            "runbook_backup_steps_s": _rounded(_median([step["backup-store"] for step in steps]), 3),
            "runbook_restore_steps_s": _rounded(_median([step["restore-store"] for step in steps]), 3),
            "runbook_steps_s": _rounded(_median([sum(step.values()) for step in steps]), 3),
            "sqlite_backup_copy_s": _rounded(_median(baselines), 3),
            "backup_restore_end_to_end_s": _rounded(_median(end_to_end), 2),
            "backup_restore_ratios": [round(ratio, 2) for ratio in ratios],
            "backup_restore_ratio": _rounded(_median(ratios), 2)}


def dry_run(name: str) -> bool:
    with tempfile.TemporaryDirectory() as folder:
        fresh_app(Path(folder))
        done = subprocess.run([CLI, "runbook", "run", name, "--cwd", folder], cwd=folder, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
        return done.returncode == 0 and any((Path(folder) / "var" / "runbooks").glob(f"*-{name}-*.ipynb"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short run of the same (1 overhead round, 2 backup/restore rounds; dry runs of every third runbook, "
                             "beside the rounds)")
    args = parser.parse_args()
    started = time.perf_counter()
    extra, bare, runner = overhead(1 if args.quick else 5)  # alone: an absolute difference of two timings
    names = list(find_runbooks())
    tried = names[::3] if args.quick else names  # --quick: 3 of 9 (a kernel each, on 2 shared cores)
    with ThreadPoolExecutor(max_workers=1 if args.quick else 4) as pool:  # --quick: one at a time, on one core
        if args.quick:  # the dry runs are pass/fail, not timed: they run beside the interleaved backup/restore rounds,
            dry_runs = pool.map(dry_run, tried)  # whose ratio compares both sides under the same load
            figures = backup_restore(50, 2)
            oks = list(dry_runs)
        else:
            figures = backup_restore(50, 5)  # the same store size: small stores measure start-up costs
            oks = list(pool.map(dry_run, tried))
    result = {"overhead_s": _rounded(extra, 3), "papermill_s": _rounded(bare, 3), "runner_s": _rounded(runner, 3), **figures,
              "dry_runs_ok": sum(oks), "dry_runs_run": len(tried), "runbooks": len(names), "quick": args.quick,
              "wall_s": round(time.perf_counter() - started, 1)}
    targets = {**TARGETS, "dry_runs_ok": (">=", len(tried) if args.quick else TARGETS["dry_runs_ok"][1])}
    for name, (direction, target) in targets.items():
        if result[name] is None:  # nothing measured (every round failed): say so, never crash
            print(f"{name}: - (target {direction} {target}: not measured)")
            continue
        met = result[name] <= target if direction == "<=" else result[name] >= target
        print(f"{name}: {result[name]} (target {direction} {target}: {'met' if met else 'MISSED'})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
