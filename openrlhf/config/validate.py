"""One validation pass over a task's config: every problem, each naming its flag.

Checks are cheap and local: values, ranges, conflicts, whether local-looking paths
exist and whether the optional packages a setting needs are installed. They only look
at the sections the task's root has (see :mod:`openrlhf.config.schema`). What needs the
data or the process count (a global batch larger than the data, divisibility by the
world size) is checked later, still before any model is loaded.
"""

from __future__ import annotations

import os
import string
from typing import Callable, Dict, List, Sequence, Tuple

from openrlhf.config.schema import (
    GENERATE_BACKENDS,
    JUDGE_TASKS,
    PRUNE_METHODS,
    RAY_CONFIGS,
    TASK_CONFIGS,
    DADPOConfig,
    DPOConfig,
    DSConfig,
    GenerateTaskConfig,
    JudgeTaskConfig,
    KDTrainConfig,
    KTOTrainConfig,
    PreferenceTrainingConfig,
    PruneTaskConfig,
    RunConfig,
    ScoreLogpsConfig,
    TrainingConfig,
)
from openrlhf.utils.deepspeed.ds_config import batch_problems, scheduler_problems
from openrlhf.utils.errors import missing_package
from openrlhf.utils.paths import output_dir_problem, output_file_problem, split_sources

_LOCAL_PREFIXES = ("/", "./", "../", "~")
_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")

Need = Callable[[bool, str, str], None]


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub name like ``Qwen/Qwen2.5-1.5B``."""
    return path.startswith(_LOCAL_PREFIXES) or path.endswith(_LOCAL_SUFFIXES)


def input_template_problem(template: str) -> str:
    """'' if ``template.format(prompt)`` fills exactly one ``{}``, else the reason (--data.input_template; also
    what the prompt renderer checks a template given to it directly with)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        return f"not a valid format string ({e}; write a literal brace as {{{{ or }}}})"
    if fields != [""]:
        return f"must contain exactly one '{{}}' (the prompt), found fields {fields!r}"
    return ""


def ds_problems(ds: DSConfig, training: bool = True) -> List[str]:
    """Problems of the --ds.* section alone (the section checks itself: :meth:`DSConfig.problems`, which the
    strategy also calls when built directly)."""
    return ds.problems(training=training)


def prune_problems(method: str, mlp_ratio: float, head_ratio: float) -> List[str]:
    """--prune.method and the --prune.*_ratio ranges (also checked by ``prune_model`` when called directly)."""
    p: List[str] = []
    if method not in PRUNE_METHODS:
        p.append(f"--prune.method: unknown method {method!r}; expected one of {', '.join(PRUNE_METHODS)}")
    for flag, r in (("--prune.mlp_ratio", mlp_ratio), ("--prune.head_ratio", head_ratio)):
        if not 0 <= r < 1:
            p.append(f"{flag}: must be in [0, 1), got {r}")
    return p


def parse_named_files(items: Sequence[str], flag: str = "--candidate", word: str = "NAME",
                      example: str = "daDPO=dadpo_eval.jsonl") -> Tuple[Dict[str, str], List[str]]:
    """``NAME=FILE`` values (judge's --candidate, evaluate's LABEL=FILE) -> ({name: file}, problems): a value
    without a name or a file, and a name given twice, are problems naming ``flag``."""
    out: Dict[str, str] = {}
    p: List[str] = []
    for item in items:
        name, eq, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not eq or not name or not path:
            p.append(f"{flag} {item!r}: expected {word}=FILE, e.g. {flag} {example}")
        elif name in out:
            p.append(f"{flag}: the {word.lower()} {name!r} is given twice")
        else:
            out[name] = path
    return out, p


def _data(cfg, need: Need) -> None:
    d = cfg.data
    need(bool(d.dataset), "data.dataset", "required (an HF hub name, a local folder or a .json/.jsonl/.parquet file)")
    need(d.max_len >= 8, "data.max_len", f"must be >= 8, got {d.max_len}")
    need(d.max_samples == -1 or d.max_samples >= 1, "data.max_samples",
         f"must be -1 (all) or >= 1, got {d.max_samples}")
    if d.input_template:
        reason = input_template_problem(d.input_template)
        need(not reason, "data.input_template", reason)
    # A task's own default template is unused with the chat template (as upstream); one you set conflicts.
    default = type(cfg)().data.input_template
    need(not (d.apply_chat_template and d.input_template and d.input_template != default), "data.input_template",
         "conflicts with --data.apply_chat_template (use one way to format prompts, not both)")

    sources = split_sources(d.dataset)
    need(len(sources) <= 1 or isinstance(cfg, TrainingConfig), "data.dataset",
         f"one source only for this command (several, comma-separated, are mixed by the trainers); got {len(sources)}")
    if d.dataset_probs:
        need(len(d.dataset_probs) == len(sources), "data.dataset_probs",
             f"give one probability per source of --data.dataset: {len(sources)} sources, {len(d.dataset_probs)} "
             f"probabilities")
        need(all(p > 0 for p in d.dataset_probs) and abs(sum(d.dataset_probs) - 1.0) < 1e-6, "data.dataset_probs",
             f"positive and summing to 1, got {list(d.dataset_probs)}")
    need(d.dataloader_num_workers >= 0, "data.dataloader_num_workers", f"must be >= 0, got {d.dataloader_num_workers}")
    need(not d.tokenizer_chat_template or d.apply_chat_template, "data.tokenizer_chat_template",
         "set but --data.apply_chat_template is false, so it would be unused")


def _training(cfg: TrainingConfig, need: Need, extend: Callable[[List[str]], None]) -> None:
    t, a = cfg.train, cfg.adam
    if isinstance(cfg, RAY_CONFIGS):  # the policy group's size is known now
        world = cfg.actor.num_nodes * cfg.actor.num_gpus_per_node
        extend(batch_problems(t, world, "actors of the policy group (--actor.num_nodes x --actor.num_gpus_per_node)"))
    else:
        extend(batch_problems(t))
    need(t.max_epochs >= 1, "train.max_epochs", f"must be >= 1, got {t.max_epochs}")
    if t.dynamic_batch_enable:
        need(t.max_tokens_per_gpu >= 1, "train.max_tokens_per_gpu",
             f"required with --train.dynamic_batch_enable (a token budget per micro-batch), got {t.max_tokens_per_gpu}")
    else:
        need(t.max_tokens_per_gpu == 0, "train.max_tokens_per_gpu", "set but --train.dynamic_batch_enable is off")
    need(a.lr > 0, "adam.lr", f"must be > 0, got {a.lr}")
    need(all(0 <= b < 1 for b in a.betas), "adam.betas", f"each must be in [0, 1), got {list(a.betas)}")
    need(a.weight_decay >= 0, "adam.weight_decay", f"must be >= 0, got {a.weight_decay}")
    extend(scheduler_problems(cfg.lr_scheduler, cfg.lr_warmup_ratio, cfg.min_lr_ratio))
    need(cfg.max_norm >= 0, "max_norm", f"must be >= 0 (0: no clipping), got {cfg.max_norm}")
    need(a.eps > 0, "adam.eps", f"must be > 0, got {a.eps}")
    need(cfg.optim == "adam", "optim", f"{cfg.optim!r}: only adam (AdamW) is in this fork; Muon is not supported")
    need(not cfg.use_ms, "use_ms", "ModelScope downloads are not supported by this fork; give local folders or HF hub "
         "names")
    need(cfg.model.aux_loss_coef >= 0, "model.aux_loss_coef", f"must be >= 0, got {cfg.model.aux_loss_coef}")
    c = cfg.ckpt
    need(c.max_mem >= 1, "ckpt.max_mem", f"must be >= 1 (GB), got {c.max_mem}")
    need(not (c.disable_ds and c.load_enable and c.save_steps > 0 and not c.save_hf), "ckpt.disable_ds",
         "with --ckpt.disable_ds no resumable checkpoint is written, so --ckpt.load_enable has nothing to resume")
    d = cfg.data
    sft = getattr(cfg.model, "pretrain_mode_enable", None) is not None
    need(not d.multiturn or sft, "data.multiturn", "only train_sft / train_kd train on every assistant turn")
    need(not (d.multiturn and not d.apply_chat_template), "data.multiturn", "needs --data.apply_chat_template")
    if sft and cfg.model.pretrain_mode_enable:
        need(not d.apply_chat_template and not d.multiturn, "model.pretrain_mode_enable",
             "conflicts with --data.apply_chat_template / --data.multiturn (pre-training reads plain text)")
    need(cfg.eval.steps == -1 or cfg.eval.steps >= 1, "eval.steps",
         f"must be -1 (end of each epoch) or >= 1, got {cfg.eval.steps}")
    c = cfg.ckpt
    need(c.save_steps == -1 or c.save_steps >= 1, "ckpt.save_steps", f"must be -1 (never) or >= 1, got {c.save_steps}")
    need(c.max_num >= 1, "ckpt.max_num", f"must be >= 1, got {c.max_num}")
    need(cfg.logger.logging_steps >= 1, "logger.logging_steps", f"must be >= 1, got {cfg.logger.logging_steps}")


def _teachers(t, need: Need, *, required: str = "", single: str = "") -> None:
    """--teacher.*: ``required`` (the reason) when a teacher must be given; ``single`` (the
    reason) when exactly one is allowed."""
    paths = t.model_name_or_path
    if required:
        need(len(paths) >= 1, "teacher.model_name_or_path", f"required {required}")
    if single:
        need(len(paths) <= 1, "teacher.model_name_or_path", f"one teacher only {single}, got {len(paths)}")
    need(len(set(paths)) == len(paths), "teacher.model_name_or_path", f"a teacher is given twice: {list(paths)}")
    need(not (t.tokenizer_chat_template and len(paths) > 1), "teacher.tokenizer_chat_template",
         "applies to one teacher; with several teachers each one uses its own tokenizer's template")


def _kd(cfg, need: Need) -> None:
    """The token-level KL baselines: one teacher, read with the student's tokens."""
    need(cfg.kd.coef >= 0, "kd.coef", f"must be >= 0, got {cfg.kd.coef}")
    need(not cfg.teacher.tokenizer_chat_template, "teacher.tokenizer_chat_template",
         "unused: the token-level KL reads the student's own tokens (no teacher template)")


def _preference(cfg: PreferenceTrainingConfig, need: Need) -> None:
    m = cfg.model
    need(m.beta >= 0, "model.beta", f"must be >= 0, got {m.beta}")
    if isinstance(cfg, DADPOConfig):
        need(not m.ipo_enable, "model.ipo_enable", "train_dadpo has no IPO form; the daDPO loss is the sigmoid one")
        t = cfg.teacher
        _teachers(t, need, required="for daDPO")
        need(all(b >= 0 for b in t.beta), "teacher.beta",
             f"must be >= 0, got {t.beta[0] if len(t.beta) == 1 else list(t.beta)}")
        if t.model_name_or_path:
            need(len(t.beta) == len(t.model_name_or_path), "teacher.beta",
                 f"give one beta per teacher: {len(t.model_name_or_path)} teachers, {len(t.beta)} betas "
                 f"({list(t.beta)})")
        need(not (m.beta == 0 and t.beta and all(b == 0 for b in t.beta)), "teacher.beta",
             "--model.beta and --teacher.beta are both 0: the loss would be constant")
    else:
        need(m.beta != 0, "model.beta", "must be > 0 for DPO (beta 0 gives a constant loss)")
        _teachers(cfg.teacher, need, single="(the KL of dDPO+KL)")
        _kd(cfg, need)
        if cfg.kd.coef > 0:
            need(bool(cfg.teacher.model_name_or_path), "teacher.model_name_or_path",
                 f"required with --kd.coef {cfg.kd.coef} (dDPO+KL: the KL to this teacher)")
        else:
            need(not cfg.teacher.model_name_or_path, "teacher.model_name_or_path",
                 "set but --kd.coef is 0, so no KL to it would be computed (give --kd.coef > 0 for dDPO+KL)")
    need(0 <= m.label_smoothing < 0.5, "model.label_smoothing", f"must be in [0, 0.5), got {m.label_smoothing}")
    need(m.nll_loss_coef >= 0, "model.nll_loss_coef", f"must be >= 0, got {m.nll_loss_coef}")
    need(not (m.ipo_enable and m.label_smoothing > 0), "model.label_smoothing",
         "conflicts with --model.ipo_enable (IPO has no label smoothing; set it to 0)")


def _generate(cfg: GenerateTaskConfig, need: Need) -> None:
    g = cfg.generate
    need(g.backend in GENERATE_BACKENDS, "generate.backend",
         f"unknown backend {g.backend!r}; expected one of {', '.join(GENERATE_BACKENDS)}")
    need(bool(g.output_path), "generate.output_path", "required (the output .jsonl file)")
    need(g.max_new_tokens >= 1, "generate.max_new_tokens", f"must be >= 1, got {g.max_new_tokens}")
    need(g.temperature >= 0, "generate.temperature", f"must be >= 0 (0: greedy), got {g.temperature}")
    need(0 < g.top_p <= 1, "generate.top_p", f"must be in (0, 1], got {g.top_p}")
    need(g.top_k == -1 or g.top_k >= 1, "generate.top_k", f"must be -1 (off) or >= 1, got {g.top_k}")
    need(g.batch_size >= 1, "generate.batch_size", f"must be >= 1, got {g.batch_size}")
    v = cfg.vllm
    need(v.tensor_parallel_size >= 1, "vllm.tensor_parallel_size", f"must be >= 1, got {v.tensor_parallel_size}")
    need(v.num_engines >= 1, "vllm.num_engines", f"must be >= 1, got {v.num_engines}")
    need(0 < v.gpu_memory_utilization <= 1, "vllm.gpu_memory_utilization",
         f"must be in (0, 1], got {v.gpu_memory_utilization}")
    need(v.max_model_len >= 0, "vllm.max_model_len", f"must be >= 0 (0: the model's own), got {v.max_model_len}")
    need(v.num_engines == 1 or g.backend != "hf" or g.ray, "vllm.num_engines",
         "several hf engines run as Ray actors only: add --generate.ray (or use --generate.backend vllm)")


def _prune(cfg: PruneTaskConfig, need: Need, extend: Callable[[List[str]], None]) -> None:
    pr = cfg.prune
    extend(prune_problems(pr.method, pr.mlp_ratio, pr.head_ratio))
    need(pr.num_layers >= 0, "prune.num_layers", f"must be >= 0, got {pr.num_layers}")
    need(pr.calibration_samples >= 1, "prune.calibration_samples", f"must be >= 1, got {pr.calibration_samples}")
    need(bool(pr.output_dir), "prune.output_dir", "required (the folder the pruned model is written to)")
    need(cfg.train.micro_batch_size >= 1, "train.micro_batch_size", f"must be >= 1, got {cfg.train.micro_batch_size}")


def _ray(cfg, need: Need) -> None:
    """train_dpo_ray / train_dadpo_ray: group sizes, and what the remote log-probs cannot do yet."""
    groups = [("actor", cfg.actor), ("ref", cfg.ref)] + ([("teacher", cfg.teacher)] if isinstance(cfg, DADPOConfig)
                                                          else [])
    for name, g in groups:
        for field_name in ("num_nodes", "num_gpus_per_node"):
            value = getattr(g, field_name)
            need(value >= 1, f"{name}.{field_name}", f"must be >= 1, got {value}")
    need(cfg.ray.num_cpus_per_actor > 0, "ray.num_cpus_per_actor", f"must be > 0, got {cfg.ray.num_cpus_per_actor}")
    need(cfg.ray.placement_timeout > 0, "ray.placement_timeout", f"must be > 0, got {cfg.ray.placement_timeout}")
    if isinstance(cfg, DPOConfig):
        need(cfg.kd.coef == 0, "kd.coef", "dDPO+KL needs the teacher's logits in the policy's process: use "
             "train_dpo (deepspeed / torchrun) for it")
    need(not cfg.eval.dataset, "eval.dataset", "the Ray trainers do not evaluate during training yet; evaluate the "
         "saved model afterwards (evaluate / judge)")
    need(cfg.data.dataloader_num_workers == 0, "data.dataloader_num_workers",
         "must be 0 with the Ray trainers (the log-probs come from other actors)")


def _packages(cfg: RunConfig, need: Need) -> None:
    # (import name, needed?, flag, feature named in the message)
    wanted = []
    if hasattr(cfg, "ds"):
        wanted.append(("flash_attn", cfg.ds.attn_implementation == "flash_attention_2", "ds.attn_implementation",
                       "--ds.attn_implementation flash_attention_2"))
        wanted.append(("flash_attn_interface", cfg.ds.attn_implementation == "flash_attention_3",
                       "ds.attn_implementation", "--ds.attn_implementation flash_attention_3"))
        if hasattr(cfg.ds, "lora"):
            wanted.append(("peft", cfg.ds.lora.rank > 0, "ds.lora.rank", "LoRA (--ds.lora.rank > 0)"))
            wanted.append(("bitsandbytes", cfg.ds.load_in_4bit, "ds.load_in_4bit", "--ds.load_in_4bit"))
            wanted.append(("liger_kernel", cfg.ds.use_liger_kernel, "ds.use_liger_kernel", "--ds.use_liger_kernel"))
    if hasattr(cfg, "logger"):
        wanted += [("tensorboard", bool(cfg.logger.tensorboard_dir), "logger.tensorboard_dir", "tensorboard logging"),
                   ("wandb", bool(cfg.logger.wandb.key), "logger.wandb.key", "wandb logging")]
    if isinstance(cfg, GenerateTaskConfig):
        wanted.append(("vllm", cfg.generate.backend == "vllm", "generate.backend", "--generate.backend vllm"))
        wanted.append(("ray", cfg.generate.ray, "generate.ray", "engines as Ray actors (--generate.ray)"))
    if isinstance(cfg, RAY_CONFIGS):
        wanted.append(("ray", True, "actor.num_nodes", "the Ray trainers"))
    for module, used, flag, feature in wanted:
        err = missing_package(module, feature) if used else None
        need(err is None, flag, str(err))


def _paths(cfg: RunConfig, need: Need) -> None:
    """Local-looking paths must exist (hub names are left to the loaders)."""
    paths = [("model.model_name_or_path", cfg.model.model_name_or_path)]
    paths += [("data.dataset", p) for p in split_sources(cfg.data.dataset)]
    if hasattr(cfg, "ref"):
        paths.append(("ref.model_name_or_path", cfg.ref.model_name_or_path))
    if hasattr(cfg, "teacher"):
        paths += [("teacher.model_name_or_path", p) for p in cfg.teacher.model_name_or_path]
    if hasattr(cfg, "eval"):
        paths += [("eval.dataset", p) for p in split_sources(cfg.eval.dataset)]
    for flag, path in paths:
        if path and _looks_local(path):
            need(os.path.exists(os.path.expanduser(path)), flag, f"file or folder not found: {path}")
    # Outputs must be writable (found now, not after the models load).
    outputs = []
    if hasattr(cfg, "ckpt"):
        outputs.append(("ckpt.output_dir", cfg.ckpt.output_dir, output_dir_problem))
        if getattr(cfg.ckpt, "path", ""):
            outputs.append(("ckpt.path", cfg.ckpt.path, output_dir_problem))
    if isinstance(cfg, GenerateTaskConfig) and cfg.generate.output_path:
        outputs.append(("generate.output_path", cfg.generate.output_path, output_file_problem))
    if isinstance(cfg, PruneTaskConfig) and cfg.prune.output_dir:
        outputs.append(("prune.output_dir", cfg.prune.output_dir, output_dir_problem))
    for flag, path, check in outputs:
        problem = check(path) if path else None
        need(problem is None, flag, str(problem))


def judge_section_problems(j, need: Need) -> None:
    """--judge.*: also what distill's ``judge:`` section is checked with."""
    need(bool(j.base_url), "judge.base_url", "required: the OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    need(not j.base_url or j.base_url.startswith(("http://", "https://")), "judge.base_url",
         f"expected an http(s):// URL, got {j.base_url!r}")
    need(bool(j.model), "judge.model", "required: the judge model's name at the endpoint")
    need(j.temperature >= 0, "judge.temperature", f"must be >= 0, got {j.temperature}")
    need(j.max_tokens >= 1, "judge.max_tokens", f"must be >= 1, got {j.max_tokens}")
    need(j.concurrency >= 1, "judge.concurrency", f"must be >= 1, got {j.concurrency}")
    need(j.max_retries >= 0, "judge.max_retries", f"must be >= 0, got {j.max_retries}")
    need(j.timeout > 0, "judge.timeout", f"must be > 0, got {j.timeout}")


def _judge(cfg: JudgeTaskConfig, need: Need, extend: Callable[[List[str]], None], check_paths: bool) -> None:
    need(cfg.task in JUDGE_TASKS, "task", f"unknown task {cfg.task!r}; expected one of {', '.join(JUDGE_TASKS)}")
    need(bool(cfg.candidate), "candidate", "give at least one NAME=FILE (repeat the flag for more models)")
    need(bool(cfg.output_dir), "output_dir", "required (the report folder)")
    need(cfg.max_items == -1 or cfg.max_items >= 1, "max_items", f"must be -1 (all) or >= 1, got {cfg.max_items}")
    files, problems = parse_named_files(cfg.candidate)
    extend(problems)
    if check_paths:
        for path in files.values():
            need(os.path.exists(os.path.expanduser(path)), "candidate", f"file not found: {path}")
    if cfg.task == "indomain":
        need(bool(cfg.teacher_responses), "teacher_responses", "required for --task indomain")
    for flag in ("teacher_responses", "prompts", "reference_outputs", "judge.prompt_file"):
        value = cfg.judge.prompt_file if flag == "judge.prompt_file" else getattr(cfg, flag)
        if check_paths and value:
            need(os.path.exists(os.path.expanduser(value)), flag, f"file not found: {value}")
    judge_section_problems(cfg.judge, need)


def validate(cfg: RunConfig, *, check_paths: bool = True, check_packages: bool = True) -> List[str]:
    """Every problem with a task's ``cfg`` (a root of :data:`TASK_CONFIGS`); [] if none.

    ``check_paths``: local-looking paths must exist. ``check_packages``: the optional
    packages the settings need (flash-attn, vllm, tensorboard, wandb) must be installed.
    """
    if type(cfg) not in TASK_CONFIGS.values():
        raise TypeError(f"not a task config: {type(cfg).__name__}")
    p: List[str] = []

    def need(ok: bool, flag: str, msg: str) -> None:
        if not ok:
            p.append(f"--{flag}: {msg}")

    extend = p.extend

    if isinstance(cfg, JudgeTaskConfig):
        _judge(cfg, need, extend, check_paths)
        if check_packages:
            err = missing_package("openai", "the LLM judge (--judge.*)")
            need(err is None, "judge.base_url", str(err))
        if check_paths and cfg.output_dir:
            problem = output_dir_problem(cfg.output_dir)
            need(problem is None, "output_dir", str(problem))
        return p
    need(bool(cfg.model.model_name_or_path), "model.model_name_or_path", "required (an HF hub name or a local folder)")
    _data(cfg, need)
    if hasattr(cfg, "ds"):
        p.extend(ds_problems(cfg.ds, training=isinstance(cfg, TrainingConfig)))
    if isinstance(cfg, TrainingConfig):
        _training(cfg, need, extend)
    if isinstance(cfg, PreferenceTrainingConfig):
        _preference(cfg, need)
    if isinstance(cfg, KDTrainConfig):
        _teachers(cfg.teacher, need, required="for dSFT+KL", single="(the token-level KL)")
        _kd(cfg, need)
    if isinstance(cfg, TrainingConfig) and cfg.ds.packing_samples:
        kl = (isinstance(cfg, KDTrainConfig) or (isinstance(cfg, DPOConfig) and cfg.kd.coef > 0))
        need(not kl and not isinstance(cfg, KTOTrainConfig), "ds.packing_samples",
             "not supported yet by the token-level KL baselines (train_kd, train_dpo --kd.coef) and train_kto; "
             "it works with train_sft, train_dpo and train_dadpo")
    if isinstance(cfg, KTOTrainConfig):
        need(cfg.model.beta > 0, "model.beta", f"must be > 0 for KTO, got {cfg.model.beta}")
        for name in ("desirable_loss_weight", "undesirable_loss_weight"):
            value = getattr(cfg.kto, name)
            need(value >= 0, f"kto.{name}", f"must be >= 0, got {value}")
        need(not cfg.train.dynamic_batch_enable, "train.dynamic_batch_enable",
             "not supported by train_kto (its KL reference point needs >= 2 pairs in every micro-batch)")
        need(cfg.train.micro_batch_size >= 2, "train.micro_batch_size",
             f"KTO estimates its KL reference point from mismatched prompt/response pairs of the micro-batch, "
             f"which needs >= 2 pairs, got {cfg.train.micro_batch_size}")
    if isinstance(cfg, ScoreLogpsConfig):
        _teachers(cfg.teacher, need)
        need(bool(cfg.teacher.model_name_or_path or cfg.ref.model_name_or_path), "teacher.model_name_or_path",
             "score_logps needs a model to score: --teacher.model_name_or_path and/or --ref.model_name_or_path")
        need(cfg.train.micro_batch_size >= 1, "train.micro_batch_size",
             f"must be >= 1, got {cfg.train.micro_batch_size}")
    if isinstance(cfg, GenerateTaskConfig):
        _generate(cfg, need)
    if isinstance(cfg, RAY_CONFIGS):
        _ray(cfg, need)
    if isinstance(cfg, PruneTaskConfig):
        _prune(cfg, need, extend)
    if check_packages:
        _packages(cfg, need)
    if check_paths:
        _paths(cfg, need)
    return p
