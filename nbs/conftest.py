"""nbval runs every code cell; nbdev-test skips cells marked `#| eval: false` (and `#| notest`). Skip them here too,
so a notebook means the same thing under both runners (e.g. a module's `if __name__ == "__main__":` entry point)."""

from __future__ import annotations

import re

import pytest

_SKIPPED = re.compile(r"^#\|\s*(eval:\s*false|notest)\s*$", re.MULTILINE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is not None and _SKIPPED.search(cell.get("source", "")):
            item.add_marker(pytest.mark.skip(reason="marked '#| eval: false' or '#| notest' in the notebook"))
