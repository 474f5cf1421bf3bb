"""Lazy package exports (PEP 562), shared by the kernel and every stage.

A stage's package is its public API, but importing it must stay light: reading a feature
name must not load Feast, and GPU hosts import the model with only torch and numpy
installed. So each package names where its exports live and imports a module only when
one of its names is first used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable]:
    """``__all__`` and a module ``__getattr__`` for ``package`` whose names live in the
    modules ``exports`` maps them to: ``__all__, __getattr__ = lazy_exports(__name__, T)``."""

    def attribute(name: str) -> Any:
        try:
            where = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(import_module(where), name)

    return sorted(exports), attribute
