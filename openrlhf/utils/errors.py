"""User-facing errors and the checks for optional packages (stdlib only).

Every problem a user can fix (a bad flag, a bad row, a missing optional package, an
unwritable output path) is a :class:`UserError`. Entry points print its message on one
line per problem and exit with code 2, without a traceback; see
:func:`openrlhf.cli.common.run_cli`.
"""

from __future__ import annotations

import importlib.util
from typing import Optional


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


# Optional packages: import name -> (pip distribution, how to install it).
OPTIONAL_PACKAGES = {
    "flash_attn": ("flash-attn", "pip install 'openrlhf[flash]' (a CUDA machine with nvcc)"),
    "vllm": ("vllm", "pip install 'openrlhf[vllm]' (a CUDA machine)"),
    "tensorboard": ("tensorboard", "pip install 'openrlhf[tensorboard]'"),
    "wandb": ("wandb", "pip install 'openrlhf[wandb]'"),
    "ray": ("ray", "pip install 'openrlhf[ray]'"),
    "openai": ("openai", "pip install 'openrlhf[judge]'"),
    "alpaca_eval": ("alpaca-eval", "pip install 'openrlhf[alpacaeval]'"),
    "peft": ("peft", "pip install 'openrlhf[lora]'"),
    "flash_attn_interface": ("flash-attn 3", "build flash-attention 3 (hopper/) from source on an H100 machine"),
    "bitsandbytes": ("bitsandbytes", "pip install bitsandbytes (a CUDA machine)"),
    "liger_kernel": ("liger-kernel", "pip install liger-kernel (a CUDA machine)"),
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
