"""One validation pass over a task's config: every problem, each naming its flag.

Each section checks its own values (``problems()`` of the section dataclasses in
:mod:`openrlhf.config.schema`; a task root checks its top-level flags the same way) and says which paths
it reads and writes and which optional packages its settings need. :func:`validate` asks every section
the task's root has, then applies the rules that read more than one section or hold for some tasks only
(:data:`CROSS_RULES`, listed per task root), then checks that local-looking inputs exist, outputs are
writable and the packages are installed. What needs the data or the process count (a global batch larger
than the data, divisibility by the world size) is checked later, still before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

from openrlhf.config.schema import (
    REGISTRY,
    DADPOConfig,
    DADPORayConfig,
    DPOConfig,
    DPORayConfig,
    DSConfig,
    FrozenDSConfig,
    GenerateTaskConfig,
    JudgeTaskConfig,
    KDTrainConfig,
    KTOTrainConfig,
    Problems,
    PruneTaskConfig,
    RunConfig,
    ScoreLogpsConfig,
    Section,
    SFTConfig,
    VLLMConfig,
)

# Rules that live next to the sections they check, kept importable from here: the strategy, the Ray driver,
# the pruner, the prompt renderer and the judge call the same functions.
from openrlhf.config.schema import input_template_problem as input_template_problem
from openrlhf.config.schema import parse_named_files as parse_named_files
from openrlhf.config.schema import prune_problems as prune_problems
from openrlhf.utils.deepspeed.ds_config import batch_problems
from openrlhf.utils.deepspeed.ds_config import scheduler_problems as scheduler_problems
from openrlhf.utils.errors import missing_package
from openrlhf.utils.paths import output_dir_problem, output_file_problem, split_sources

_LOCAL_PREFIXES = ("/", "./", "../", "~")
_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub name like ``Qwen/Qwen2.5-1.5B``."""
    return path.startswith(_LOCAL_PREFIXES) or path.endswith(_LOCAL_SUFFIXES)


def _missing_input(flag: str, path: str) -> Optional[str]:
    """Why a local-looking input does not exist, or None. A dataset may be ``folder@data_dir`` (the
    files under that sub-folder, read as :func:`openrlhf.datasets.loading.load_rows` does)."""
    full = os.path.expanduser(path)
    if os.path.exists(full):
        return None
    if flag.endswith(".dataset") and "@" in path:
        folder, data_dir = (part.strip() for part in full.split("@", 1))
        if os.path.isdir(folder):
            if os.path.isdir(os.path.join(folder, data_dir)):
                return None
            return f"{data_dir!r} is not a folder in {folder} (name@data_dir)"
    return f"file or folder not found: {path}"


def ds_problems(ds: DSConfig, training: bool = True) -> List[str]:
    """Problems of the --ds.* section alone (the section checks itself: :meth:`DSConfig.problems`, which the
    strategy also calls when built directly)."""
    return ds.problems(training=training)


class Checks(Problems):
    """The problems found so far, and whether paths and packages are checked too."""

    def __init__(self, check_paths: bool, check_packages: bool):
        super().__init__()
        self.check_paths = check_paths
        self.check_packages = check_packages


Rule = Callable[[Any, Checks], None]


# ---- the rules that read more than one section (or hold for some tasks only) -------------------------


def _data_template(cfg: Any, c: Checks) -> None:
    # A task's own default template is unused with the chat template (as upstream); one you set conflicts.
    d = cfg.data
    default = type(cfg)().data.input_template
    c.need(
        not (d.apply_chat_template and d.input_template and d.input_template != default),
        "data.input_template",
        "conflicts with --data.apply_chat_template (use one way to format prompts, not both)",
    )


def _one_source(cfg: Any, c: Checks) -> None:
    """The tasks that do not train read one --data.dataset source."""
    n = len(split_sources(cfg.data.dataset))
    c.need(
        n <= 1,
        "data.dataset",
        f"one source only for this command (several, comma-separated, are mixed by the trainers); got {n}",
    )


def _one_turn(cfg: Any, c: Checks) -> None:
    """The preference trainers: --data.multiturn is an SFT setting."""
    c.need(not cfg.data.multiturn, "data.multiturn", "only train_sft / train_kd train on every assistant turn")


def _multiturn_template(cfg: Any, c: Checks) -> None:
    """Every trainer: the turns of a conversation come from the chat template."""
    d = cfg.data
    c.need(not (d.multiturn and not d.apply_chat_template), "data.multiturn", "needs --data.apply_chat_template")


def _pretrain_mode(cfg: Any, c: Checks) -> None:
    """train_sft / train_kd: pre-training reads plain text."""
    d = cfg.data
    if cfg.model.pretrain_mode_enable:
        c.need(
            not d.apply_chat_template and not d.multiturn,
            "model.pretrain_mode_enable",
            "conflicts with --data.apply_chat_template / --data.multiturn (pre-training reads plain text)",
        )


_PREFERENCE_KEYS = "preference rows are read with --data.prompt_key / --data.chosen_key / --data.rejected_key"
_SFT_KEYS = "rows are read with --data.input_key (the prompt) / --data.output_key (the response)"


def _unused_keys(flags: Tuple[str, ...], used: str) -> Rule:
    """A rule refusing the --data.*_key flags the task never reads, when set to other than its default."""

    def rule(cfg: Any, c: Checks) -> None:
        command = next(t.command for t in REGISTRY.values() if t.config is type(cfg))
        default = type(cfg)().data
        for name in flags:
            c.need(
                getattr(cfg.data, name) == getattr(default, name),
                f"data.{name}",
                f"is not used by {command}: {used}",
            )

    return rule


_SFT_ONLY_KEYS = _unused_keys(("input_key", "output_key"), _PREFERENCE_KEYS)
_PREFERENCE_ONLY_KEYS = _unused_keys(("prompt_key", "chosen_key", "rejected_key"), _SFT_KEYS)


_PACKING_REFUSED = (
    "not supported yet by the token-level KL baselines (train_kd, train_dpo --kd.coef) and "
    "train_kto; it works with train_sft, train_dpo and train_dadpo"
)


def _no_packing(cfg: Any, c: Checks) -> None:
    c.need(not cfg.ds.packing_samples, "ds.packing_samples", _PACKING_REFUSED)


def _token_kl(cfg: Any, c: Checks) -> None:
    """The token-level KL baselines read the teacher with the student's tokens."""
    c.need(
        not cfg.teacher.tokenizer_chat_template,
        "teacher.tokenizer_chat_template",
        "unused: the token-level KL reads the student's own tokens (no teacher template)",
    )


def _kd(cfg: KDTrainConfig, c: Checks) -> None:
    """train_kd (dSFT+KL): exactly one teacher."""
    n = len(cfg.teacher.model_name_or_path)
    c.need(n >= 1, "teacher.model_name_or_path", "required for dSFT+KL")
    c.need(n <= 1, "teacher.model_name_or_path", f"one teacher only (the token-level KL), got {n}")


def _dpo(cfg: DPOConfig, c: Checks) -> None:
    """train_dpo: beta1 > 0; a teacher exactly when --kd.coef > 0 (dDPO+KL)."""
    c.need(cfg.model.beta != 0, "model.beta", "must be > 0 for DPO (beta 0 gives a constant loss)")
    paths = cfg.teacher.model_name_or_path
    c.need(len(paths) <= 1, "teacher.model_name_or_path", f"one teacher only (the KL of dDPO+KL), got {len(paths)}")
    if cfg.kd.coef > 0:
        c.need(
            bool(paths),
            "teacher.model_name_or_path",
            f"required with --kd.coef {cfg.kd.coef} (dDPO+KL: the KL to this teacher)",
        )
        _no_packing(cfg, c)
    else:
        c.need(
            not paths,
            "teacher.model_name_or_path",
            "set but --kd.coef is 0, so no KL to it would be computed (give --kd.coef > 0 for dDPO+KL)",
        )


def _dadpo(cfg: DADPOConfig, c: Checks) -> None:
    """train_dadpo: the sigmoid loss; beta1 and beta2 not both 0."""
    m, t = cfg.model, cfg.teacher
    c.need(not m.ipo_enable, "model.ipo_enable", "train_dadpo has no IPO form; the daDPO loss is the sigmoid one")
    c.need(
        not (m.beta == 0 and t.beta and all(b == 0 for b in t.beta)),
        "teacher.beta",
        "--model.beta and --teacher.beta are both 0: the loss would be constant",
    )


def _onpolicy(cfg: Any, c: Checks) -> None:
    """On-policy rounds replace rows' rejected responses between steps: the DataLoader must read the rows
    in this process, when they are asked for (no worker processes reading ahead)."""
    o = cfg.onpolicy
    vllm_set = [
        f.name for f in dataclasses.fields(VLLMConfig) if getattr(cfg.vllm, f.name) != getattr(VLLMConfig(), f.name)
    ]
    c.need(
        not vllm_set or (o.backend == "vllm" and o.round_steps > 0),
        "vllm." + (vllm_set[0] if vllm_set else ""),
        "set, but no vLLM engine runs (it is the engine of --onpolicy.backend vllm with --onpolicy.round_steps > 0)",
    )
    if o.backend == "vllm":
        c.need(cfg.vllm.num_engines == 1, "vllm.num_engines", "on-policy rounds run one vLLM engine")
        c.need(cfg.vllm.tensor_parallel_size == 1, "vllm.tensor_parallel_size", "on-policy rounds: 1 (one GPU) for now")
        c.need(cfg.ds.lora.rank == 0, "onpolicy.backend", "vllm: LoRA policies not yet (use --onpolicy.backend hf)")
    if o.round_steps > 0:
        c.need(
            cfg.data.dataloader_num_workers == 0,
            "data.dataloader_num_workers",
            f"must be 0 with --onpolicy.round_steps {cfg.onpolicy.round_steps} (worker processes would read rows "
            "before the policy's new answers replace them)",
        )


def _kto(cfg: KTOTrainConfig, c: Checks) -> None:
    """train_kto: its KL reference point needs >= 2 pairs in every micro-batch."""
    t = cfg.train
    c.need(
        not t.dynamic_batch_enable,
        "train.dynamic_batch_enable",
        "not supported by train_kto (its KL reference point needs >= 2 pairs in every micro-batch)",
    )
    c.need(
        t.micro_batch_size >= 2,
        "train.micro_batch_size",
        f"KTO estimates its KL reference point from mismatched prompt/response pairs of the micro-batch, "
        f"which needs >= 2 pairs, got {t.micro_batch_size}",
    )


def _ray(cfg: Any, c: Checks) -> None:
    """train_dpo_ray / train_dadpo_ray: the batch against the policy group, what the remote log-probs cannot do
    yet, and the ray package."""
    world = cfg.actor.num_nodes * cfg.actor.num_gpus_per_node
    c.extend(
        batch_problems(cfg.train, world, "actors of the policy group (--actor.num_nodes x --actor.num_gpus_per_node)")
    )
    c.need(
        not cfg.eval.dataset,
        "eval.dataset",
        "the Ray trainers do not evaluate during training yet; evaluate the saved model afterwards (evaluate / judge)",
    )
    c.need(
        cfg.data.dataloader_num_workers == 0,
        "data.dataloader_num_workers",
        "must be 0 with the Ray trainers (the log-probs come from other actors)",
    )
    c.need(
        cfg.onpolicy.round_steps == 0,
        "onpolicy.round_steps",
        "on-policy rounds run in train_dpo / train_dadpo (deepspeed / torchrun); the Ray trainers do not take them yet",
    )
    if c.check_packages:
        err = missing_package("ray", "the Ray trainers")
        c.need(err is None, "actor.num_nodes", str(err))


def _ray_dpo(cfg: DPORayConfig, c: Checks) -> None:
    c.need(
        cfg.kd.coef == 0,
        "kd.coef",
        "dDPO+KL needs the teacher's logits in the policy's process: use train_dpo (deepspeed / torchrun) for it",
    )


def _score(cfg: ScoreLogpsConfig, c: Checks) -> None:
    c.need(
        bool(cfg.teacher.model_name_or_path or cfg.ref.model_name_or_path),
        "teacher.model_name_or_path",
        "score_logps needs a model to score: --teacher.model_name_or_path and/or --ref.model_name_or_path",
    )


def _generate(cfg: GenerateTaskConfig, c: Checks) -> None:
    g, v = cfg.generate, cfg.vllm
    c.need(
        v.num_engines == 1 or g.backend != "hf" or g.ray,
        "vllm.num_engines",
        "several hf engines run as Ray actors only: add --generate.ray (or use --generate.backend vllm)",
    )
    c.need(
        not cfg.ds.experts_implementation or g.backend == "hf",
        "ds.experts_implementation",
        "applies to the hf backend only (vLLM picks its own MoE kernels): use --generate.backend hf or drop it",
    )
    served = g.backend == "served"
    c.need(
        served == bool(cfg.served.base_url),
        "served.base_url" if served else "generate.backend",
        "required with --generate.backend served"
        if served
        else f"is {g.backend}, but --served.base_url names a served model: use --generate.backend served",
    )
    if served:
        c.need(not g.ray, "generate.ray", "a served model scales on its server: drop --generate.ray")
        for section, default in (("vllm", VLLMConfig()), ("ds", FrozenDSConfig())):
            given = [
                f
                for f in dataclasses.fields(default)
                if getattr(getattr(cfg, section), f.name) != getattr(default, f.name)
            ]
            c.need(
                not given,
                f"{section}.{given[0].name}" if given else section,
                "set, but --generate.backend served loads nothing here (the server runs the model)",
            )


def _judge_files(cfg: JudgeTaskConfig, c: Checks) -> None:
    """The files the judge reads must exist."""
    if not c.check_paths:
        return
    files, _ = parse_named_files(cfg.candidate)
    for path in files.values():
        c.need(os.path.exists(os.path.expanduser(path)), "candidate", f"file not found: {path}")
    for flag, value in (
        ("teacher_responses", cfg.teacher_responses),
        ("prompts", cfg.prompts),
        ("reference_outputs", cfg.reference_outputs),
        ("judge.prompt_file", cfg.judge.prompt_file),
    ):
        if value:
            c.need(os.path.exists(os.path.expanduser(value)), flag, f"file not found: {value}")


_PREFERENCE: Tuple[Rule, ...] = (_data_template, _one_turn, _multiturn_template, _SFT_ONLY_KEYS)
# Task root -> the rules that read more than one of its sections (each section checks its own fields).
CROSS_RULES: Dict[Type[RunConfig], Tuple[Rule, ...]] = {
    SFTConfig: (_data_template, _multiturn_template, _pretrain_mode, _PREFERENCE_ONLY_KEYS),
    KDTrainConfig: (
        _data_template,
        _multiturn_template,
        _pretrain_mode,
        _PREFERENCE_ONLY_KEYS,
        _kd,
        _token_kl,
        _no_packing,
    ),
    DPOConfig: (*_PREFERENCE, _dpo, _token_kl, _onpolicy),
    DADPOConfig: (*_PREFERENCE, _dadpo, _onpolicy),
    KTOTrainConfig: (*_PREFERENCE, _kto, _no_packing),
    DPORayConfig: (*_PREFERENCE, _dpo, _token_kl, _ray, _ray_dpo, _onpolicy),
    DADPORayConfig: (*_PREFERENCE, _dadpo, _ray, _onpolicy),
    ScoreLogpsConfig: (_data_template, _one_source, _SFT_ONLY_KEYS, _score),
    GenerateTaskConfig: (_data_template, _one_source, _generate),
    PruneTaskConfig: (_data_template, _one_source),
    JudgeTaskConfig: (_judge_files,),
}


def sections(cfg: RunConfig) -> List[Section]:
    """The sections of a config root, in the order of its fields."""
    values = [getattr(cfg, f.name) for f in dataclasses.fields(cfg)]
    return [v for v in values if isinstance(v, Section)]


def _environment(parts: Sequence[Section], c: Checks) -> None:
    """The optional packages the settings need are installed; local-looking inputs exist; outputs are
    writable (found now, not after the models load)."""
    if c.check_packages:
        for part in parts:
            for module, flag, feature in part.packages():
                err = missing_package(module, feature)
                c.need(err is None, flag, str(err))
    if c.check_paths:
        for part in parts:
            for flag, path in part.inputs():
                if path and _looks_local(path):
                    problem = _missing_input(flag, path)
                    c.need(problem is None, flag, str(problem))
        for part in parts:
            for flag, path, is_file in part.outputs():
                problem = (output_file_problem if is_file else output_dir_problem)(path)
                c.need(problem is None, flag, str(problem))


def validate(cfg: RunConfig, *, check_paths: bool = True, check_packages: bool = True) -> List[str]:
    """Every problem with a task's ``cfg`` (a root of :data:`TASK_CONFIGS`); [] if none.

    ``check_paths``: local-looking paths must exist. ``check_packages``: the optional
    packages the settings need (flash-attn, vllm, tensorboard, wandb) must be installed.
    """
    rules = CROSS_RULES.get(type(cfg))
    if rules is None:
        raise TypeError(f"not a task config: {type(cfg).__name__}")
    c = Checks(check_paths, check_packages)
    unused = cfg.unused_sections()
    # each section the settings use, then the root's own top-level flags
    parts = [s for s in sections(cfg) if not any(s is u for u in unused)] + [cfg]
    for part in parts:
        c.extend(part.problems())
    for rule in rules:
        rule(cfg, c)
    _environment(parts, c)
    return list(c)
