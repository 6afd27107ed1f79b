"""nats-py and redis-py are optional extras: the transports, the topology and the worker command import without
them, and a transport built without its client library is a one-line `ConfigError` naming the extra to install."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKER = '''
import sys

class _NoBrokerClients:
    """As if neither nats-py nor redis-py were installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("nats", "redis"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoBrokerClients())
'''


def without_clients(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with `arguments`, nats and redis unimportable (a sitecustomize blocks them)."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    return subprocess.run([sys.executable, *arguments], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=environment)


def test_modules_import_without_the_broker_clients(tmp_path: Path) -> None:
    result = without_clients(tmp_path, "-c", textwrap.dedent("""
        import sys
        import cellmono
        import cellmono.transports.brokers, cellmono.transports.jetstream, cellmono.transports.nats
        import cellmono.transports.redis_pubsub, cellmono.transports.redis
        import cellmono.topology.placement, cellmono.topology.workers, cellmono.cli.worker
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("nats", "redis"))
        print("loaded:", loaded)
    """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded: []"


def test_a_transport_without_its_client_says_which_extra_to_install(tmp_path: Path) -> None:
    result = without_clients(tmp_path, "-c", textwrap.dedent("""
        from cellmono.core.errors import ConfigError
        from cellmono.transports.nats import NatsTransport
        from cellmono.transports.redis import RedisTransport
        for make in (NatsTransport, RedisTransport):
            try:
                make()
            except ConfigError as error:
                print(error)
    """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "the nats transport needs 'nats-py', which is not installed: pip install 'cellmono[nats]'",
        "the redis transport needs 'redis', which is not installed: pip install 'cellmono[redis]'"]


def test_a_worker_without_its_client_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "settings.ini").write_text(
        "[app]\ncells = search\n[security]\nallow_public = true\n"
        "[cell.search]\nclass = examples.notes.search:SearchCell\nplacement = process\ntransport = redis\n")
    result = without_clients(tmp_path, "-m", "cellmono.cli.worker", "--settings", str(tmp_path / "settings.ini"),
                             "--cell", "search")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr == "cellmono: error: the redis transport needs 'redis', which is not installed: " \
                            "pip install 'cellmono[redis]'\n"
