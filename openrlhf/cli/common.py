"""What every command-line entry point shares: one way to run a body and to end the process.

A CLI module parses its flags and makes one call (into :mod:`openrlhf.recipes`,
:mod:`openrlhf.pipeline` or :mod:`openrlhf.tools`) through :func:`run_cli` (config-driven CLIs) or :func:`run_main` (the file tools).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Callable, List, Optional

from openrlhf.config.parse import ConfigError, load_config
from openrlhf.utils.distributed import exit_cleanly, is_rank_zero_process
from openrlhf.utils.errors import Interrupted, UserError


class ArgParser(argparse.ArgumentParser):
    """``argparse`` for the file tools (build_sets, convert_gguf, distill, ...) with the error path
    of every other CLI: a bad flag raises :class:`~openrlhf.config.parse.ConfigError`, which
    :func:`run_main` prints as one ``error: ...`` message with exit code 2 (``--help`` still
    prints and exits 0). Parse inside the body given to :func:`run_main`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._renamed: dict = {}

    def error(self, message: str):
        raise ConfigError([f"{message} (see {self.prog} --help)"])

    def renamed(self, old: str, new: str) -> None:
        """Accept the flag's spelling of an earlier release, ``old``, for ``new`` (one release more),
        with a one-line note on stderr when it is used; giving both is a flag error."""
        self._renamed[old] = new

    def parse_known_args(self, args: Optional[List[str]] = None, namespace: Any = None):
        args = list(sys.argv[1:] if args is None else args)
        out = []
        for token in args:
            flag, eq, value = token.partition("=")
            new = self._renamed.get(flag)
            if new is not None:
                if any(t == new or t.startswith(new + "=") for t in args):
                    self.error(f"{flag} (the old spelling) and {new} name one setting; give one")
                if is_rank_zero_process():
                    print(
                        f"note: {flag} is now spelled {new}; the old spelling goes in the next release", file=sys.stderr
                    )
                token = new + eq + value
            out.append(token)
        return super().parse_known_args(out, namespace)


def run_main(body: Callable[[], Any]) -> Any:
    """Run a CLI entry point's body and end the process the same way for every CLI.

    A :class:`~openrlhf.utils.errors.UserError` (bad flags, bad data, a missing optional
    package, an unwritable output) prints ``error: <message>`` without a traceback and
    exits with code 2; under a multi-process launcher only rank 0 prints it (every rank
    meets the same error). Ctrl-C exits with code 130. SIGTERM (a scheduler's preemption or
    time limit; launchers pass it on to every rank) is handled as Ctrl-C is: the same clean
    stop (work kept, resumable, child processes ended), one ``terminated (SIGTERM)`` line,
    exit code 143; a second SIGTERM during that stop is ignored. Under a launcher the process
    then exits at once (see :func:`~openrlhf.utils.distributed.exit_cleanly`) so no rank hangs
    at teardown.
    """
    sigterm = _SigtermAsInterrupt()
    try:
        with sigterm:
            result = body()
    except UserError as e:
        if is_rank_zero_process():
            print(f"error: {e}", file=sys.stderr, flush=True)
        exit_cleanly(2)
        sys.exit(2)
    except KeyboardInterrupt as e:
        _end_progress_bars()  # the message below starts a line of its own, not glued to a bar
        word, code = ("terminated (SIGTERM)", 143) if sigterm.received else ("interrupted", 130)
        if is_rank_zero_process():
            print(f"{word}: {e}" if isinstance(e, Interrupted) else word, file=sys.stderr, flush=True)
        exit_cleanly(code)
        sys.exit(code)
    exit_cleanly()
    return result


class _SigtermAsInterrupt:
    """While entered (in the main thread), SIGTERM raises :class:`KeyboardInterrupt` where the program is, as
    Ctrl-C does, and says so in :attr:`received`; later SIGTERMs are ignored so the stop can finish. The
    previous handler is restored on exit."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def _handle(self, signum, frame) -> None:
        if self.received:
            return
        self.received = True
        raise KeyboardInterrupt("SIGTERM")

    def __enter__(self) -> "_SigtermAsInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


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
