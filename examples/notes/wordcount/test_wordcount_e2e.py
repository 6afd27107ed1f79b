"""End to end: the wordcount cell answers through the bus, and only with the capability it requires.

Run by the cell's GenOps gates (genops/policy.toml) in a worktree, against the regenerated module."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cellmono.core.app import App
from cellmono.core.config import load_settings
from cellmono.core.errors import AccessDenied
from cellmono.security.guard import Principal
from cellmono.topology.services import Runtime
from examples.notes.wordcount.wordcount import Counts, Text, WordCountCell


def test_counts_through_the_bus_with_its_capability(tmp_path: Path) -> None:
    (tmp_path / "settings.ini").write_text("[security]\nrole.reader = notes:read\nrole.nobody = other:read\n")
    settings = load_settings(tmp_path / "settings.ini", environ={})
    runtime = Runtime.from_settings(settings)

    async def scenario() -> None:
        async with App([WordCountCell()], settings=settings, services=runtime) as app:
            reader = runtime.token_for(Principal(id="ana", roles=("reader",)))
            counts = await app.bus.request("wordcount.count", Text(text="one two\nthree\n"), principal="ana",
                                           capability=reader, response=Counts)
            assert counts == Counts(words=3, lines=2, characters=14)
            nobody = runtime.token_for(Principal(id="eve", roles=("nobody",)))
            with pytest.raises(AccessDenied):
                await app.bus.request("wordcount.count", Text(text="x"), principal="eve", capability=nobody,
                                      response=Counts)

    asyncio.run(scenario())
