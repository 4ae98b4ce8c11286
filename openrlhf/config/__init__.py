"""Typed config tree, YAML + dotted-flag parsing, validation (stdlib + yaml only)."""

from openrlhf.config.parse import ConfigError, config_to_dict, dump_config, load_config
from openrlhf.config.schema import Config
from openrlhf.config.validate import validate

__all__ = ["Config", "ConfigError", "config_to_dict", "dump_config", "load_config", "validate"]
