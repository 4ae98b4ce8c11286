"""Lazy package exports: keep ``import openrlhf.<package>`` free of heavy imports."""

from __future__ import annotations

from importlib import import_module
from typing import Callable, Dict, List, Tuple


def lazy_exports(package: str, namespace: dict, exports: Dict[str, str]) -> Tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for a package whose ``exports`` map a name to the module
    that defines it (``".sub"`` relative to ``package``, or an absolute module name). A name
    is imported on first use and then cached in the package ``namespace``."""

    def __getattr__(name: str):
        mod = exports.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(mod, package if mod.startswith(".") else None), name)
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
