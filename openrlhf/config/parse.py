"""Build a task's config root from YAML files and dotted command-line flags.

    python -m openrlhf.cli.train_dadpo --config run.yaml --ds.zero_stage 3 --ref.offload

Order: every ``--config`` file (in the order given), then every flag (in the order
given; a flag given twice: the last one wins, as with argparse, except list flags such as
``--candidate``, whose values accumulate). Every problem found
(unknown flag or key, missing or malformed value, unreadable file, failed check) is
collected and raised once as a :class:`ConfigError`. Nothing is rewritten behind the
user's back: a value is either taken exactly as given or reported.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from typing import Any, Dict, List, Optional, Set, Tuple

import yaml

from openrlhf.config.schema import TASK_COMMANDS, TASK_CONFIGS, TASKS, RunConfig
from openrlhf.config.validate import validate
from openrlhf.utils.atomic import atomic_write
from openrlhf.utils.errors import UserError

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")

# Flat flag names of older OpenRLHF releases, used only to suggest the new name.
_LEGACY_NAMES = {
    "pretrain": "model.model_name_or_path",
    "ref_pretrain": "ref.model_name_or_path",
    "teacher_pretrain": "teacher.model_name_or_path",
    "gradient_checkpointing": "model.gradient_checkpointing_enable",
    "ipo": "model.ipo_enable",
    "ref_offload": "ref.offload",
    "micro_train_batch_size": "train.micro_batch_size",
    "train_batch_size": "train.batch_size",
    "learning_rate": "adam.lr",
    "adam_betas": "adam.betas",
    "l2": "adam.weight_decay",
    "bf16": "ds.param_dtype",
    "flash_attn": "ds.attn_implementation",
    "save_path": "ckpt.output_dir",
    "ckpt_path": "ckpt.path",
    "max_ckpt_num": "ckpt.max_num",
    "load_checkpoint": "ckpt.load_enable",
    "eval_steps": "eval.steps",
    "eval_dataset": "eval.dataset",
    "use_tensorboard": "logger.tensorboard_dir",
    "use_wandb": "logger.wandb.key",
    "wandb_group": "logger.wandb.group",
    "lora_rank": "ds.lora.rank",
    "lora_alpha": "ds.lora.alpha",
    "lora_dropout": "ds.lora.dropout",
    "target_modules": "ds.lora.target_modules",
    "disable_ds_ckpt": "ckpt.disable_ds",
    "max_ckpt_mem": "ckpt.max_mem",
    "save_hf_ckpt": "ckpt.save_hf",
    "use_ds_universal_ckpt": "ds.use_universal_ckpt",
    "full_determinism": "train.full_determinism_enable",
    "gradient_checkpointing_use_reentrant": "model.gradient_checkpointing_reentrant",
    "pretrain_mode": "model.pretrain_mode_enable",
    "generate.num_engines": "vllm.num_engines",
    "generate.tp_size": "vllm.tensor_parallel_size",
    "generate.gpu_memory_utilization": "vllm.gpu_memory_utilization",
    "vllm_num_engines": "vllm.num_engines",
    "vllm_tensor_parallel_size": "vllm.tensor_parallel_size",
    "vllm_gpu_memory_utilization": "vllm.gpu_memory_utilization",
    "wandb_project": "logger.wandb.project",
    "wandb_run_name": "logger.wandb.run_name",
    "wandb_org": "logger.wandb.org",
    "kd_coef": "kd.coef",
    "desirable_loss_weight": "kto.desirable_loss_weight",
    "undesirable_loss_weight": "kto.undesirable_loss_weight",
}


class ConfigError(UserError):
    """One or more problems with the configuration; ``.problems`` lists them all."""

    def __init__(self, problems: List[str]):
        self.problems = list(problems)
        n = len(self.problems)
        header = f"invalid configuration ({n} problem{'s' if n != 1 else ''}):"
        super().__init__("\n".join([header] + [f"  {p}" for p in self.problems]))


# ---------------------------------------------------------------------------
# The field table: dotted name -> type, read from the dataclass annotations.


def _leaf_types(cls: type, prefix: str = "") -> Tuple[Dict[str, Any], Set[str]]:
    """(dotted leaf name -> annotation, set of dotted section names) of a dataclass tree."""
    leaves: Dict[str, Any] = {}
    sections: Set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sections.add(name)
            sub_leaves, sub_sections = _leaf_types(tp, name + ".")
            leaves.update(sub_leaves)
            sections |= sub_sections
        else:
            leaves[name] = tp
    return leaves, sections


def _is_list(tp: Any) -> bool:
    """``Tuple[X, ...]``: any number of values (a comma-separated list on the command line)."""
    args = typing.get_args(tp)
    return typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis


def _type_name(tp: Any) -> str:
    if _is_list(tp):
        return _type_name(typing.get_args(tp)[0]) + "[,...]"
    if typing.get_origin(tp) is tuple:
        return " ".join(_type_name(a) for a in typing.get_args(tp))
    return {str: "string", int: "int", float: "float", bool: "bool"}.get(tp, str(tp))


def _tuple_len(tp: Any) -> int:
    """Number of values a flag of this type takes (0 for a scalar, -1 for a list)."""
    if _is_list(tp):
        return -1
    return len(typing.get_args(tp)) if typing.get_origin(tp) is tuple else 0


def _parse_scalar(tp: Any, value: Any) -> Any:
    """Convert a CLI string or YAML scalar to ``tp``; ValueError with a short reason."""
    if isinstance(value, str):
        text = value.strip()
        if tp is str:
            return value
        if tp is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(f"expected a bool (true/false/1/0), got {value!r}")
        if tp is int:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"expected an int, got {value!r}") from None
        if tp is float:
            try:
                out = float(text)
            except ValueError:
                raise ValueError(f"expected a float, got {value!r}") from None
            if not math.isfinite(out):
                raise ValueError(f"expected a finite float, got {value!r}")
            return out
    else:  # a YAML scalar that is not a string: its YAML type must fit.
        if tp is bool and isinstance(value, bool):
            return value
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"expected a finite float, got {value!r}")
            return float(value)
        got = "null" if value is None else f"{type(value).__name__} {value!r}"
        hint = " (quote it)" if tp is str and value is not None else ""
        raise ValueError(f"expected {'a' if tp is not int else 'an'} {_type_name(tp)}, got {got}{hint}")
    raise TypeError(f"unsupported config field type {tp!r}")


def _parse_value(tp: Any, values: List[Any]) -> Any:
    """Parse one field's value(s): a list of one item for scalars, n items for tuples, any
    number for lists (strings are split at commas: ``a,b``)."""
    n = _tuple_len(tp)
    if n == 0:
        return _parse_scalar(tp, values[0])
    if n < 0:
        item = typing.get_args(tp)[0]
        parts: List[Any] = []
        for v in values:
            parts += [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else [v]
        return tuple(_parse_scalar(item, v) for v in parts)
    if len(values) != n:
        shown = " ".join(str(v) for v in values)
        raise ValueError(f"expected {n} values ({_type_name(tp)}), got {len(values)}: {shown!r}")
    return tuple(_parse_scalar(a, v) for a, v in zip(typing.get_args(tp), values, strict=True))


def _suggest(name: str, known: List[str], dashes: str = "") -> str:
    """' (did you mean X?)' for an unknown dotted name, or ''."""
    leaf = name.rsplit(".", 1)[-1]
    guesses = [k for k in known if k.rsplit(".", 1)[-1] == leaf]
    if not guesses and name in _LEGACY_NAMES:
        guesses = [_LEGACY_NAMES[name]]
    if not guesses:
        guesses = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(dashes + g for g in guesses)}?)" if guesses else ""


def _set(cfg: RunConfig, name: str, value: Any) -> None:
    *parents, leaf = name.split(".")
    obj: Any = cfg
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, leaf, value)


# ---------------------------------------------------------------------------
# YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: Set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _flatten_yaml(
    data: dict, path: str, leaves: Dict[str, Any], sections: Set[str], problems: List[str], task: str, prefix: str = ""
) -> Dict[str, Any]:
    """Nested or dotted YAML mapping -> {dotted leaf name: raw value}; problems named by file and key."""
    out: Dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append(f"{path}: key {key!r} under {prefix or 'the top level'}: keys must be strings")
            continue
        name = prefix + key
        if name in sections:
            if isinstance(value, dict):
                sub = _flatten_yaml(value, path, leaves, sections, problems, task, name + ".")
                for k, v in sub.items():
                    if k in out:
                        problems.append(f"{path}: key {k}: given twice")
                    out[k] = v
            else:
                problems.append(f"{path}: key {name}: is a section, expected a mapping, got {value!r}")
        elif name in leaves:
            if name in out:
                problems.append(f"{path}: key {name}: given twice")
            out[name] = value
        else:
            problems.append(f"{path}: key {name}: unknown key{_unknown(name, sorted(leaves), task, '')}")
    return out


def _apply_yaml(
    cfg: RunConfig, path: str, leaves: Dict[str, Any], sections: Set[str], problems: List[str], bad: Set[str], task: str
) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_StrictLoader)
    except FileNotFoundError:
        problems.append(f"--config: file not found: {path}")
        return
    except OSError as e:
        problems.append(f"--config: cannot read {path}: {e.strerror or e}")
        return
    except yaml.YAMLError as e:
        problems.append(f"{path}: malformed YAML: {' '.join(str(e).split())}")
        return
    if data is None:
        return
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
        return
    for name, raw in _flatten_yaml(data, path, leaves, sections, problems, task).items():
        try:
            value = _yaml_value(leaves[name], raw)
        except ValueError as e:
            problems.append(f"{path}: key {name}: {e}")
            bad.add(name)
            continue
        _set(cfg, name, value)


def _yaml_value(tp: Any, raw: Any) -> Any:
    """One field's value as a YAML mapping gives it (a list for tuple fields); ValueError with a short reason."""
    n = _tuple_len(tp)
    if n > 0 and not isinstance(raw, list):
        raise ValueError(f"expected a list of {n} values ({_type_name(tp)}), got {raw!r}")
    return _parse_value(tp, raw if isinstance(raw, list) and n else [raw])


# ---------------------------------------------------------------------------
# Command line


def task_flags(task: str) -> Set[str]:
    """The dotted flag names (without ``--``) that ``task`` accepts."""
    return set(_leaf_types(TASK_CONFIGS[task])[0])


def _other_tasks(name: str, task: str) -> str:
    """' (a flag of train_dadpo, score_logps)' when ``name`` belongs to other tasks' configs, else ''."""
    owners = [
        TASK_COMMANDS[t]
        for t, cls in TASK_CONFIGS.items()
        if t != task and (name in _leaf_types(cls)[0] or name in _leaf_types(cls)[1])
    ]
    # A Ray trainer takes every flag of its plain sibling: name it only for the flags of its own.
    owners = [o for o in owners if not (o.endswith("_ray") and o[: -len("_ray")] in owners)]
    return f" (not used by {TASK_COMMANDS[task]}; a flag of {', '.join(owners)})" if owners else ""


def _unknown(name: str, known: List[str], task: str, dashes: str) -> str:
    return _other_tasks(name, task) or _suggest(name, known, dashes)


def _split_argv(
    argv: List[str], leaves: Dict[str, Any], problems: List[str], bad: Set[str], task: str
) -> Tuple[List[str], List[Tuple[str, Any]]]:
    """argv -> (config files, [(dotted name, parsed value)]); problems in argv order."""
    configs: List[str] = []
    overrides: List[Tuple[str, Any]] = []
    known = sorted(leaves)
    last_flag = ""
    i = 0

    def take_following() -> List[str]:
        nonlocal i
        out = []
        while i < len(argv) and not argv[i].startswith("--"):
            out.append(argv[i])
            i += 1
        return out

    while i < len(argv):
        tok = argv[i]
        i += 1
        if not tok.startswith("--") or tok == "--":
            where = f"after {last_flag}" if last_flag else "before any flag"
            problems.append(f"unexpected argument {tok!r} {where} (flags look like --section.name VALUE)")
            continue
        name, eq, inline = tok[2:].partition("=")
        last_flag = "--" + name
        flag = "--" + name
        if name == "config":
            if eq:
                configs.append(inline)
            elif i < len(argv) and not argv[i].startswith("--"):
                configs.append(argv[i])
                i += 1
            else:
                problems.append(f"{flag}: missing value (a YAML file)")
            continue
        if name not in leaves:
            take_following()  # its values belong to the unknown flag, not reported again
            problems.append(f"{flag}: unknown flag{_unknown(name, known, task, '--')}")
            continue
        tp = leaves[name]
        n = _tuple_len(tp)
        if n:
            values = [v for v in inline.split(",") if v.strip()] if eq else []
            values += take_following()
            if not values:
                what = f"{n} values" if n > 0 else "one or more values"
                problems.append(f"{flag}: missing value ({what}: {_type_name(tp)})")
                bad.add(name)
                continue
        elif tp is bool and not eq:
            if i < len(argv) and argv[i].strip().lower() in _TRUE + _FALSE:
                values = [argv[i]]
                i += 1
            else:
                values = ["true"]  # a bare flag
        elif eq:
            values = [inline]
        elif i < len(argv) and not argv[i].startswith("--"):
            values = [argv[i]]
            i += 1
        else:
            problems.append(f"{flag}: missing value (expected {'an' if tp is int else 'a'} {_type_name(tp)})")
            bad.add(name)
            continue
        try:
            overrides.append((name, _parse_value(tp, values)))
        except ValueError as e:
            problems.append(f"{flag}: {e}")
            bad.add(name)
    return configs, overrides


def load_config(argv: Optional[List[str]], task: str, *, check_paths: bool = True, check_packages: bool = True) -> Any:
    """Parse ``argv`` (like ``sys.argv[1:]``; None: ``sys.argv[1:]``) into the validated
    config root of ``task`` (one of :data:`~openrlhf.config.schema.TASKS`; e.g. ``"dadpo"``
    gives a :class:`~openrlhf.config.schema.DADPOConfig`).

    Raises :class:`ConfigError` listing every problem; ``--help`` prints the flags and exits.
    ``check_paths=False`` skips the check that local-looking paths exist,
    ``check_packages=False`` the check that optional packages the settings need are installed.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(format_help(task))
        raise SystemExit(0)
    root = TASK_CONFIGS[task]
    leaves, sections = _leaf_types(root)
    problems: List[str] = []
    bad: Set[str] = set()  # fields whose given value was rejected: skip their checks
    configs, overrides = _split_argv(argv, leaves, problems, bad, task)
    cfg = root()
    for path in configs:
        _apply_yaml(cfg, path, leaves, sections, problems, bad, task)
    given: Dict[str, Any] = {}
    for name, value in overrides:
        # A list flag given several times accumulates (--candidate a=x --candidate b=y); others: the last wins.
        given[name] = given[name] + value if name in given and _tuple_len(leaves[name]) < 0 else value
    for name, value in given.items():
        _set(cfg, name, value)
    return _validated(cfg, problems, bad, check_paths, check_packages)


def config_from_flags(
    task: str, flags: Dict[str, Any], *, check_paths: bool = True, check_packages: bool = True
) -> Any:
    """The validated config root of ``task`` from a mapping of dotted flag names to values, each read
    as a ``--config`` file's value of that flag is (``{"train.batch_size": 8, "adam.lr": "1e-5",
    "adam.betas": [0.9, 0.95]}``): how the distillation pipeline builds its stages' configs from
    its YAML sections. Raises :class:`ConfigError` listing every problem, each naming its flag
    (``--train.batch_sise: unknown flag (did you mean --train.batch_size?)``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    root = TASK_CONFIGS[task]
    leaves, _ = _leaf_types(root)
    problems: List[str] = []
    bad: Set[str] = set()
    cfg = root()
    for name, raw in flags.items():
        if name not in leaves:
            problems.append(f"--{name}: unknown flag{_unknown(name, sorted(leaves), task, '--')}")
            continue
        try:
            _set(cfg, name, _yaml_value(leaves[name], raw))
        except ValueError as e:
            problems.append(f"--{name}: {e}")
            bad.add(name)
    return _validated(cfg, problems, bad, check_paths, check_packages)


def _validated(cfg: RunConfig, problems: List[str], bad: Set[str], check_paths: bool, check_packages: bool) -> Any:
    """``cfg`` after :func:`validate`, or :class:`ConfigError` with ``problems`` and the checks' own (a field
    whose given value was rejected is not checked again)."""
    problems = problems + [
        p
        for p in validate(cfg, check_paths=check_paths, check_packages=check_packages)
        if not any(p.startswith(f"--{b}:") for b in bad)
    ]
    if problems:
        raise ConfigError(problems)
    return cfg


def config_to_flags(cfg: RunConfig) -> List[str]:
    """The command-line flags that rebuild ``cfg`` (``load_config(config_to_flags(cfg), task)`` gives an
    equal config): one per field whose value differs from the task root's default, ``--name=value``
    (``--name v1 v2 ...`` for tuples). For a process boundary, e.g. a pipeline stage started as a
    DeepSpeed job. ValueError for a value no flag can express (an empty list over a non-empty
    default, a list item holding a comma)."""
    leaves, _ = _leaf_types(type(cfg))
    default = type(cfg)()
    argv: List[str] = []
    for name, tp in leaves.items():
        value, base = _get(cfg, name), _get(default, name)
        if value == base:
            continue
        if _tuple_len(tp):
            items = [_flag_text(v) for v in value]
            if not items or (_is_list(tp) and any("," in v for v in items)) or any(v.startswith("--") for v in items):
                raise ValueError(f"--{name}: {value!r} cannot be given as a flag")
            argv += [f"--{name}", *items]
        else:
            argv.append(f"--{name}={_flag_text(value)}")
    return argv


def _get(cfg: Any, name: str) -> Any:
    for part in name.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _flag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def format_help(task: str) -> str:
    """Every flag with its type and default, one per line."""
    root = TASK_CONFIGS[task]
    lines = [
        f"usage: python -m openrlhf.cli.{TASK_COMMANDS[task]} [--config FILE.yaml ...] [--section.name VALUE ...]",
        "",
        "  --config FILE.yaml   settings as a nested (or dotted) YAML mapping; flags override it",
    ]
    defaults = config_to_dict(root())
    leaves, _ = _leaf_types(root)
    for name, tp in leaves.items():
        value: Any = defaults
        for part in name.split("."):
            value = value[part]
        lines.append(f"  --{name} {_type_name(tp).upper()}   (default: {value!r})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Saving the resolved config


def config_to_dict(cfg: Any, redact: bool = False) -> Dict[str, Any]:
    """A dataclass tree as nested plain dicts (tuples become lists). ``redact``: secrets (fields with
    ``metadata={"secret": True}``, e.g. --logger.wandb.key) written as ``""``."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value, redact)
        elif isinstance(value, tuple):
            value = list(value)
        elif redact and f.metadata.get("secret"):
            value = ""
        out[f.name] = value
    return out


def dump_config(cfg: RunConfig, path: str) -> None:
    """Write ``cfg`` as YAML (atomically) so that ``load_config(["--config", path])`` rebuilds it
    (secrets such as --logger.wandb.key are left out)."""
    with atomic_write(path) as f:
        yaml.safe_dump(config_to_dict(cfg, redact=True), f, sort_keys=False, allow_unicode=True)
