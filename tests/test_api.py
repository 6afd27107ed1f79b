"""The public API is explicit: what `__all__` lists exists, and nothing private is listed."""

from __future__ import annotations

import importlib
import pkgutil
import re

import cellmono


def test_top_level_api_is_importable() -> None:
    assert cellmono.__all__, "the package must declare its public API"
    for name in cellmono.__all__:
        assert hasattr(cellmono, name), name
    assert len(set(cellmono.__all__)) == len(cellmono.__all__)


def test_every_module_declares_an_api_without_private_names() -> None:
    for module_info in pkgutil.walk_packages(cellmono.__path__, "cellmono."):
        if module_info.name.endswith("_modidx"):
            continue
        try:
            module = importlib.import_module(module_info.name)
        except ImportError as error:  # an optional extra that is not installed
            assert "cellmono" not in str(error), f"{module_info.name}: {error}"
            continue
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{module_info.name} has no __all__"
        for name in exported:
            assert hasattr(module, name), f"{module_info.name}.{name} is listed but missing"
            assert not name.startswith("_"), f"{module_info.name} exports private {name}"


def _all_subclasses(root: type) -> set[type]:
    found: set[type] = set()
    for sub in root.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


def test_error_tree_is_documented() -> None:
    """Every CellmonoError subclass the package defines appears in the tree drawn in its docstring."""
    for module_info in pkgutil.walk_packages(cellmono.__path__, "cellmono."):
        try:
            importlib.import_module(module_info.name)
        except ImportError:
            continue
    tree = cellmono.CellmonoError.__doc__ or ""
    names = re.findall(r"[A-Z][A-Za-z]+", tree)
    for error in _all_subclasses(cellmono.CellmonoError):
        if error.__module__.startswith("cellmono."):
            assert error.__name__ in names, f"{error.__module__}.{error.__name__} missing from CellmonoError's tree"
