"""Shared test setup: the async backend, and the `brokers` helper module (real nats-server and Valkey)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `from brokers import ...` in the broker tests


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


# Files that measure time, saturate the machine on purpose, or kill and pause brokers: they run alone, after
# the rest has run two at a time (`-m serial`, the second half of the README's test command), so a neighbour's
# load cannot decide their outcome.
SERIAL = ("tests/ops/test_triggers", "tests/ops/test_promotion", "tests/runtime/test_serve_triggers",
          "tests/cluster/", "tests/transports/test_broker_recovery", "tests/transports/test_outage_patience", "tests/transports/test_transport_faults",
          "tests/gateway/test_hardening_edge", "tests/gateway/test_gateway_fuzz", "tests/gateway/test_audit_inline", "tests/cli/test_cli.py",
          "tests/sandbox/", "tests/security/test_audit_ship", "tests/security/test_mutants_audit_log", "tests/ops/test_docs_", "tests/topology/test_supervisor",
          "nbs/53_telemetry",
          "nbs/56_triggers", "nbs/57_controller", "nbs/58_promotion")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "serial: runs alone, after the parallel part (timing or machine-wide load)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
