"""Plain functions that build data, models and a trainer from a task's config and run it.

``cli/`` parses flags and calls exactly one of these; ``pipeline/`` composes them.
Tests call them directly. Light on import: names resolve lazily. Which function runs which
task is declared once, in :data:`openrlhf.config.schema.REGISTRY`; :func:`recipe_of` reads it.
"""

from importlib import import_module
from typing import Callable

from openrlhf.config.schema import REGISTRY
from openrlhf.utils.lazy import lazy_exports

# function name -> its module, for every recipe of the registry that lives in this package
_EXPORTS = {fn: mod for mod, fn in (t.recipe.split(":") for t in REGISTRY.values())
            if mod.startswith(__name__ + ".")}

__all__ = sorted(_EXPORTS) + ["recipe_of"]


def recipe_of(task: str) -> Callable:
    """The function that runs ``task`` (its registry entry's recipe), imported now."""
    module, name = REGISTRY[task].recipe.split(":")
    return getattr(import_module(module), name)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
