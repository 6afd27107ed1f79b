"""Processes that start together and create the same key files must end up sharing one key, not each their own."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest


def _signing_key_id(path: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    from cellmono.security.signing import SigningKeys
    start.wait()
    try:
        out.put(SigningKeys.load_or_create(path).active)
    except Exception as error:  # reported, so the test names what went wrong
        out.put(f"{type(error).__name__}: {error}")


def _kek_id(path: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    from cellmono.security.keys import FileKeyProvider
    start.wait()
    try:
        out.put(FileKeyProvider(path, create=True).current_key_id())
    except Exception as error:
        out.put(f"{type(error).__name__}: {error}")


@pytest.mark.parametrize("target", [_signing_key_id, _kek_id], ids=["signing-keys", "kek"])
def test_concurrent_first_runs_agree_on_one_key(tmp_path: Path, target) -> None:
    context = multiprocessing.get_context("spawn")
    for round_number in range(5):
        path = str(tmp_path / f"round-{round_number}" / "key.json")
        Path(path).parent.mkdir()
        start, out = context.Event(), context.Queue()
        processes = [context.Process(target=target, args=(path, start, out)) for _ in range(6)]
        for process in processes:
            process.start()
        start.set()
        results = [out.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(30)
        assert len(set(results)) == 1, f"round {round_number}: processes disagree or failed: {results}"
        assert not list(Path(path).parent.glob("*.tmp*")), "temporary files left behind"
