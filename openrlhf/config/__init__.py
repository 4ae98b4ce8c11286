"""Typed config trees (one root per task), YAML + dotted-flag parsing, validation (stdlib + yaml only)."""

from openrlhf.config.parse import ConfigError, config_to_dict, dump_config, load_config
from openrlhf.config.schema import (
    TASK_CONFIGS,
    TASKS,
    DADPOConfig,
    DPOConfig,
    GenerateTaskConfig,
    PruneTaskConfig,
    RunConfig,
    ScoreLogpsConfig,
    SFTConfig,
    TrainingConfig,
)
from openrlhf.config.validate import validate

__all__ = [
    "ConfigError",
    "config_to_dict",
    "dump_config",
    "load_config",
    "validate",
    "TASK_CONFIGS",
    "TASKS",
    "RunConfig",
    "TrainingConfig",
    "SFTConfig",
    "DPOConfig",
    "DADPOConfig",
    "ScoreLogpsConfig",
    "GenerateTaskConfig",
    "PruneTaskConfig",
]
