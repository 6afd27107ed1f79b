"""The add-worker runbook: its dry run shows what will be provisioned and writes nothing; apply (after that dry run)
provisions the worker and prints the one command for the new machine, never a secret."""
from __future__ import annotations

import json
import stat
from pathlib import Path

from runbooks_support import cellmono, fresh_app


def printed(archive: Path) -> str:
    """What a runbook run printed: its cells' stream outputs."""
    cells = json.loads(archive.read_text())["cells"]
    return "".join("".join(output.get("text", "")) for cell in cells for output in cell.get("outputs", []))


def test_add_worker_dry_run_then_apply(tmp_path: Path) -> None:
    settings = fresh_app(tmp_path)
    text = settings.read_text().replace("[cell.search]\n", "[cell.search]\nplacement = process\ntransport = nats\n", 1)
    settings.write_text(text + "\n[nats]\nurl = nats://app:app-secret@127.0.0.1:4999\n")
    dry = cellmono("runbook", "run", "add-worker", "-p", "name=w1", "-p", "cells=search", "--cwd", str(tmp_path),
                   cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    archive = printed(next((tmp_path / "var" / "runbooks").glob("*-add-worker-*.ipynb")))
    assert "NATS user worker-w1" in archive and "would refuse" not in archive
    assert "cm.r.search." in archive  # the subjects it may use, shown before anything is written
    credential = tmp_path / "var" / "credentials" / "w1.credential"
    assert not credential.exists() and not (tmp_path / "var" / "workers.json").exists()

    done = cellmono("runbook", "run", "add-worker", "-p", "name=w1", "-p", "cells=search", "--apply",
                    "--cwd", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    token = json.loads(credential.read_text())["token"]
    applied = printed(sorted((tmp_path / "var" / "runbooks").glob("*-add-worker-*.ipynb"))[-1])
    assert "cellmono worker --credential w1.credential" in applied
    assert token not in applied + done.stdout and "app-secret" not in applied + done.stdout


def test_add_worker_on_redis_shows_the_acl_then_makes_the_user(tmp_path: Path) -> None:
    import redis

    from brokers import require, start_redis
    server = require(start_redis)
    try:
        settings = fresh_app(tmp_path)
        text = settings.read_text().replace("[cell.search]\n", "[cell.search]\nplacement = process\ntransport = redis\n", 1)
        settings.write_text(text + f"\n[redis]\nurl = {server.url}\n")
        dry = cellmono("runbook", "run", "add-worker", "-p", "name=w1", "-p", "cells=search", "--cwd", str(tmp_path),
                       cwd=tmp_path)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        archive = printed(next((tmp_path / "var" / "runbooks").glob("*-add-worker-*.ipynb")))
        assert "Redis ACL user worker-w1" in archive and "would refuse" not in archive
        assert "-@all" in archive and "store:{search}*" in archive  # what it may touch, before anything is made
        client = redis.Redis.from_url(server.url)
        assert client.acl_getuser("worker-w1") is None

        done = cellmono("runbook", "run", "add-worker", "-p", "name=w1", "-p", "cells=search", "--apply",
                        "--cwd", str(tmp_path), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        credential = json.loads((tmp_path / "var" / "credentials" / "w1.credential").read_text())
        applied = printed(sorted((tmp_path / "var" / "runbooks").glob("*-add-worker-*.ipynb"))[-1])
        assert client.acl_getuser("worker-w1")["enabled"] and "no aclfile" in applied
        password = credential["url"].split("@")[0].rsplit(":", 1)[1]
        assert password not in applied + done.stdout
    finally:
        server.cleanup()
