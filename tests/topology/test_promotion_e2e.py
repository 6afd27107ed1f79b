"""Promotion without code change: the notes example in process, then with `search` as two worker replicas
over NATS, then over Redis. The same assertions pass and the cell's source is byte-identical."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from brokers import require, start_nats, start_redis

from cellmono.core.config import load_settings
from cellmono.topology.placement import topology_mermaid

ROOT = Path(__file__).resolve().parents[2]
CELLMONO = str(Path(sys.executable).parent / "cellmono")
SEARCH_SOURCE = ROOT / "examples" / "notes" / "search.py"


def private_state(folder: Path) -> dict[str, str]:
    """Environment overrides that keep the app's keys, audit log and store in `folder`, out of the work tree."""
    files = {"SIGNING_KEYS": "signing-keys.json", "AUDIT_PATH": "audit.sqlite", "STORE_PATH": "store.sqlite",
             "KEK_FILE": "kek.json"}
    return {f"CELLMONO__SECURITY__{key}": str(folder / name) for key, name in files.items()}


def run_app(env: dict[str, str], state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CELLMONO, "run", "--seconds", "2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=90, env={**os.environ, **env, **private_state(state)})


def promoted(kind: str, url: str) -> dict[str, str]:
    return {"CELLMONO__CELL_SEARCH__PLACEMENT": "process", "CELLMONO__CELL_SEARCH__REPLICAS": "2",
            "CELLMONO__CELL_SEARCH__TRANSPORT": kind, f"CELLMONO__{kind.upper()}__URL": url,
            "CELLMONO__NATS__PREFIX": "e2e", "CELLMONO__REDIS__PREFIX": "e2e"}


@pytest.fixture(scope="module")
def servers():
    nats_server, redis_server = require(start_nats), require(start_redis)
    yield {"nats": nats_server, "redis": redis_server}
    nats_server.cleanup()
    redis_server.cleanup()


@pytest.mark.parametrize("placement", ["inprocess", "nats", "redis"])
def test_same_results_wherever_search_runs(placement: str, servers, tmp_path: Path) -> None:
    source_before = hashlib.sha256(SEARCH_SOURCE.read_bytes()).hexdigest()
    env = {} if placement == "inprocess" else promoted(placement, servers[placement].url)
    result = run_app(env, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "imported 5 notes" in out
    assert "search 'sandbox' -> Sandboxing risky tools" in out
    assert "search 'message bus' -> The message bus" in out
    assert "digest: 5 notes" in out
    if placement == "inprocess":
        assert "spawned worker" not in out
    else:  # the search cell really ran in two worker processes, each hearing every note
        for replica in (1, 2):
            assert f"[search#{replica}] cellmono.topology.workers: worker search #{replica}" in out, out[-3000:]
            indexed = [line for line in out.splitlines() if f"[search#{replica}] cellmono." in line
                       and ".search: indexed note" in line]  # the cell's own logger, whatever its prefix
            assert len(indexed) == 5, out[-3000:]
        assert "app notes started with cells: notes, digest, importer" in out
    assert hashlib.sha256(SEARCH_SOURCE.read_bytes()).hexdigest() == source_before


def test_diagram_shows_where_cells_run(servers, tmp_path: Path) -> None:
    result = subprocess.run([CELLMONO, "diagram"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **promoted("nats", servers["nats"].url), **private_state(tmp_path)})
    assert result.returncode == 0, result.stderr
    # `cellmono diagram` draws the cells; the topology module draws placements (see its notebook)
    settings = load_settings(ROOT / "settings.ini", environ=promoted("nats", servers["nats"].url))
    diagram = topology_mermaid(settings)
    assert 'subgraph workers_search["search: 2 worker replicas"]' in diagram and "nats broker" in diagram
    assert 'cell_notes["notes"]' in diagram
