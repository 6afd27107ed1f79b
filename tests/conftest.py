"""Shared test setup: the async backend, and the `brokers` helper module (real nats-server and Valkey)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `from brokers import ...` in the broker tests


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
