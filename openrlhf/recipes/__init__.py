"""Plain functions that build data, models and a trainer from a task's config and run it.

``cli/`` parses flags and calls exactly one of these (each CLI imports its own after parsing);
``pipeline/`` composes them (:func:`openrlhf.pipeline.tasks.runner_of`). Tests call them directly.
"""
