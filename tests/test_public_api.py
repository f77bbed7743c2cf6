"""The public surface of both packages: complete, sorted, importable, documented."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import waterfall_asgi
import waterfall_fakes

PACKAGES = [waterfall_asgi, waterfall_fakes]
# Modules whose import needs an optional extra, or that are entry points rather than API.
OPTIONAL = {"waterfall_fakes.strategies", "waterfall_fakes.respx", "waterfall_fakes.pytest_plugin"}


def modules(package: ModuleType) -> list[ModuleType]:
    names = [m.name for m in pkgutil.iter_modules(package.__path__, package.__name__ + ".")]
    return [importlib.import_module(n) for n in names if not n.rsplit(".", 1)[1].startswith("_")]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_all_is_sorted_and_resolves(package: ModuleType) -> None:
    exported = package.__all__
    assert exported == sorted(exported, key=_order)
    for name in exported:
        assert hasattr(package, name), name


def _order(name: str) -> tuple[int, str]:
    # CONSTANTS first, then CamelCase classes, then functions: each group alphabetically
    if name.isupper():
        return (0, name)
    return (1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_public_module_name_is_reexported(package: ModuleType) -> None:
    missing = []
    for module in modules(package):
        if module.__name__ in OPTIONAL or module.__name__.endswith((".cli", ".demo")):
            continue
        for name in getattr(module, "__all__", []):
            if name not in package.__all__:
                missing.append(f"{module.__name__}.{name}")
    assert missing == []


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_public_names_are_documented(package: ModuleType) -> None:
    undocumented = [
        name
        for name in package.__all__
        if (inspect.isclass(obj := getattr(package, name)) or inspect.isfunction(obj))
        and not inspect.getdoc(obj)
    ]
    assert undocumented == []
