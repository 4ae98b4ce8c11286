"""Plain functions that build data, models and a trainer from a task's config and run it.

``cli/`` parses flags and calls exactly one of these; ``pipeline/`` composes them.
Tests call them directly. Which function runs which task is declared once, in
:data:`openrlhf.config.schema.REGISTRY`; :func:`recipe_of` reads it.
"""

from importlib import import_module
from typing import Callable

from openrlhf.config.schema import REGISTRY


def recipe_of(task: str) -> Callable:
    """The function that runs ``task`` (its registry entry's recipe), imported now: the registry names it as a
    string so that the CLI parses its flags before the recipe (and torch) is imported."""
    module, name = REGISTRY[task].recipe.split(":")
    return getattr(import_module(module), name)
