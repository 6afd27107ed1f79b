"""`examples/deploy/` stays true: the committed nats-server configs are what the plan writes, nats-server
accepts each of them, they keep JetStream with `sync_interval: always`, and the unit and image recipe
run the commands the CLI has."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from brokers import IN_CI, BrokerMissing, nats_binary

from cellmono.cli.main import build_parser
from cellmono.transports.cluster import node_config

DEPLOY = Path(__file__).resolve().parents[2] / "examples" / "deploy"
sys.path.insert(0, str(DEPLOY))

from plan import PLAN  # noqa: E402


def test_the_committed_configs_are_what_the_plan_writes() -> None:
    for node in PLAN.nodes:
        committed = (DEPLOY / "nats" / f"{node.name}.conf").read_text()
        assert committed == node_config(PLAN, node.name), f"{node.name}.conf drifted: run examples/deploy/plan.py"
        assert "sync_interval: always" in committed and "jetstream {" in committed
    assert len(PLAN.nodes) == 3 and PLAN.replicas == 3


@pytest.mark.parametrize("name", ["n1", "n2", "n3"])
def test_nats_server_accepts_each_config(name: str) -> None:
    try:
        binary = nats_binary()
    except BrokerMissing as error:
        if IN_CI:
            pytest.fail(str(error))
        pytest.skip(str(error))
    check = subprocess.run([binary, "-c", str(DEPLOY / "nats" / f"{name}.conf"), "-t"], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_unit_and_the_image_run_commands_the_cli_has() -> None:
    parser = build_parser(["worker", "serve"])
    unit = (DEPLOY / "systemd" / "cellmono-worker@.service").read_text()
    assert "cellmono worker --settings /etc/cellmono/settings.ini --cell" in unit
    parsed = parser.parse_args(["worker", "--settings", "/etc/cellmono/settings.ini", "--cell", "search", "--replica", "1"])
    assert parsed.cell == "search" and parsed.replica == 1
    recipe = (DEPLOY / "Containerfile").read_text()
    assert 'ENTRYPOINT ["cellmono"]' in recipe
    parsed = parser.parse_args(["serve", "--settings", "/etc/cellmono/settings.ini", "--host", "0.0.0.0"])
    assert parsed.host == "0.0.0.0"
