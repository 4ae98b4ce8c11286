"""What every command-line entry point shares: one way to run a body and to end the process.

A CLI module parses its flags and makes one call (into :mod:`openrlhf.recipes`,
:mod:`openrlhf.pipeline` or :mod:`openrlhf.tools`) through :func:`run_cli` (config-driven CLIs) or :func:`run_main` (the file tools).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, List, Optional

from openrlhf.config.parse import ConfigError, load_config
from openrlhf.utils.distributed import exit_cleanly, is_rank_zero_process
from openrlhf.utils.errors import Interrupted, UserError


class ArgParser(argparse.ArgumentParser):
    """``argparse`` for the file tools (build_sets, convert_gguf, distill, ...) with the error path
    of every other CLI: a bad flag raises :class:`~openrlhf.config.parse.ConfigError`, which
    :func:`run_main` prints as one ``error: ...`` message with exit code 2 (``--help`` still
    prints and exits 0). Parse inside the body given to :func:`run_main`."""

    def error(self, message: str):
        raise ConfigError([f"{message} (see {self.prog} --help)"])


def run_main(body: Callable[[], Any]) -> Any:
    """Run a CLI entry point's body and end the process the same way for every CLI.

    A :class:`~openrlhf.utils.errors.UserError` (bad flags, bad data, a missing optional
    package, an unwritable output) prints ``error: <message>`` without a traceback and
    exits with code 2; under a multi-process launcher only rank 0 prints it (every rank
    meets the same error). Ctrl-C exits with code 130. Under a launcher the process then
    exits at once (see :func:`~openrlhf.utils.distributed.exit_cleanly`) so no rank hangs
    at teardown.
    """
    try:
        result = body()
    except UserError as e:
        if is_rank_zero_process():
            print(f"error: {e}", file=sys.stderr, flush=True)
        exit_cleanly(2)
        sys.exit(2)
    except KeyboardInterrupt as e:
        _end_progress_bars()  # the message below starts a line of its own, not glued to a bar
        if is_rank_zero_process():
            print(f"interrupted: {e}" if isinstance(e, Interrupted) else "interrupted", file=sys.stderr, flush=True)
        exit_cleanly(130)
        sys.exit(130)
    exit_cleanly()
    return result


def _end_progress_bars() -> None:
    """Close every tqdm bar still open (each ends its line)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # a bar half torn down by the interrupt: nothing more to end
            pass


def run_cli(fn: Callable[[Any], Any], task: str, argv: Optional[List[str]] = None) -> Any:
    """Entry-point body of a config-driven CLI: parse the flags of ``task`` into its config
    root (see :data:`~openrlhf.config.schema.TASK_CONFIGS`), then ``fn(cfg)``, through :func:`run_main`.
    ``fn`` imports its recipe (and torch) itself, after parsing: ``--help`` and config errors come first."""
    return run_main(lambda: fn(load_config(sys.argv[1:] if argv is None else argv, task=task)))
