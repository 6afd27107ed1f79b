"""The public API is explicit: what `__all__` lists exists, and nothing private is listed."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
from contextvars import ContextVar
from types import ModuleType
from typing import TypeVar, get_origin

import cellmono

TOP_LEVEL = {
    "AccessDenied",
    "CompletionRequest",
    "Context",
    "completes",
    "prompt",
    "resource",
    "App",
    "Bus",
    "BusClosed",
    "BusError",
    "Cell",
    "CellmonoError",
    "ConfigError",
    "ContractError",
    "Empty",
    "Envelope",
    "Guard",
    "Health",
    "MalformedMessage",
    "MemoryTransport",
    "MessageError",
    "MessageTooLarge",
    "NoResponders",
    "PayloadInvalid",
    "RemoteError",
    "RequestTimeout",
    "Settings",
    "SubjectError",
    "Transport",
    "VerificationError",
    "background",
    "build_app",
    "current_envelope",
    "decode",
    "encode",
    "handles",
    "load_settings",
    "tool",
}


def test_top_level_api_is_importable() -> None:
    assert cellmono.__all__, "the package must declare its public API"
    for name in cellmono.__all__:
        assert hasattr(cellmono, name), name
    assert len(set(cellmono.__all__)) == len(cellmono.__all__)


def public_modules() -> list[ModuleType]:
    modules = []
    for module_info in pkgutil.walk_packages(cellmono.__path__, "cellmono."):
        if module_info.name.endswith("_modidx"):
            continue
        try:
            modules.append(importlib.import_module(module_info.name))
        except ImportError as error:  # an optional extra that is not installed
            assert "cellmono" not in str(error), f"{module_info.name}: {error}"
    return modules


def defined_here(module: ModuleType) -> set[str]:
    """The public classes and functions a module defines itself (not those it imports)."""
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
            and getattr(value, "__module__", None) == module.__name__}


def test_every_module_declares_an_exact_api() -> None:
    """httpx style: `__all__` lists exactly the module's own public classes and functions, plus its
    UPPER_CASE constants and type aliases; no logger, no imported name, no helper leaks."""
    for module in public_modules():
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{module.__name__} has no __all__"
        assert len(set(exported)) == len(exported), f"{module.__name__}: __all__ repeats a name"
        for name in exported:
            assert hasattr(module, name), f"{module.__name__}.{name} is listed but missing"
            assert not name.startswith("_"), f"{module.__name__} exports private {name}"
            value = getattr(module, name)
            assert not isinstance(value, (logging.Logger, ModuleType)), f"{module.__name__} exports helper {name}"
            if (inspect.isclass(value) or callable(value)) and get_origin(value) is None:
                home = getattr(inspect.unwrap(value), "__module__", module.__name__)
                assert home == module.__name__, f"{module.__name__} re-exports {name} from {home}"
            elif not (name.isupper() or get_origin(value) is not None or isinstance(value, (TypeVar, ContextVar))
                      or type(value).__module__ == "typing"):
                raise AssertionError(f"{module.__name__} exports {name}: a constant should be UPPER_CASE")
        if module.__name__ != "cellmono":
            missing = defined_here(module) - set(exported)
            assert not missing, f"{module.__name__} defines public {sorted(missing)} but does not list them in __all__"


def test_top_level_api_is_the_user_api() -> None:
    """What `from cellmono import ...` offers a cell author, exactly."""
    assert set(cellmono.__all__) == TOP_LEVEL


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
