"""The distillation pipeline's planner: a pure function from the distill config to its stages, in order.

:func:`plan_distill` builds every stage's settings once, as the typed config of the task that runs it
(the registry's roots: :class:`~openrlhf.config.schema.SFTConfig` for dSFT,
:class:`~openrlhf.config.schema.DADPOConfig` for daDPO, ...), from the YAML's ``common:`` section, the
stage's paths in ``run_dir`` and its own section; every stage is validated and every problem of every
stage is raised at once (:class:`~openrlhf.config.parse.ConfigError`, each line naming the stage and the
flag) before anything runs. Nothing is run, no file is written and no model is loaded:
:class:`~openrlhf.pipeline.distill.Runner` executes the plan; tests read it.

A stage's ``task`` is a :data:`~openrlhf.config.schema.REGISTRY` task (its ``config`` that task's root)
or one of the pipeline's own steps (:data:`STEPS`, its ``config`` the step's settings).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from openrlhf.config.parse import ConfigError, config_from_flags, config_to_flags, task_flags
from openrlhf.config.schema import (
    KL_BASELINE_COEF,
    PROGRAM_SCORED_TASKS,
    REGISTRY,
    DSConfig,
    JudgeConfig,
    JudgeTaskConfig,
    RayGroupConfig,
    RaySettings,
    RunConfig,
)
from openrlhf.eval.run import BENCH_MAX_NEW_TOKENS
from openrlhf.generation.sets import PREFERENCE_SET_FLAGS, SFT_SET_FLAGS
from openrlhf.pipeline.config import (
    BASELINES,
    DistillConfig,
    StudentConfig,
    baselines_of,
    judge_settings,
    served_teacher,
    sweep_points,
)
from openrlhf.utils.errors import has_package
from openrlhf.utils.served import Endpoint

# The baselines a served teacher cannot give -> why.
SERVED_TEACHER_REFUSES = {
    "dsft_kl": "token-level KL needs the teacher's logits in the training job",
    "ddpo_kl": "token-level KL needs the teacher's logits in the training job",
    "online_dadpo": "on-policy rounds score each round's answers with the teacher loaded in the training job",
}

# The context vLLM needs (--vllm.max_model_len) for a benchmark's answers: its turns, each answered with up
# to the prompt file's new tokens (eval_prompts writes them into every row: FastChat's 1024 for MT-Bench,
# 2048 for AlpacaEval, 1280 for IFEval), and room for the prompt. The longest prompts with SmolLM2's tokenizer and chat
# template: MT-Bench's two turns 437 tokens, AlpacaEval's instruction 509, IFEval's prompt 386. The generate
# stage checks the exact lengths again before it loads a model.
BENCH_TURNS = {"mtbench": 2, "alpacaeval": 1, "ifeval": 1}
BENCH_PROMPT_ROOM = 1024

# The pipeline's own steps (not commands of the registry) -> what the step does.
STEPS = {
    "gguf_convert": "the teacher's GGUF file -> an HF folder (config: the GGUF name)",
    "prepare_prompts": "ShareGPT first human turns -> train / eval (/ val) prompt files (config: PromptsConfig)",
    "build_sets": "teacher and student responses -> the preference and SFT sets (config: SetsConfig)",
    "eval_prompts": "a benchmark's prompt file (MT-Bench, AlpacaEval, IFEval; config: EvalPromptsStep)",
    "select": "the sweep point with the best validation metric becomes daDPO (config: SelectStep)",
    "report": "the offline report of every model (config: ReportStep)",
}

# Short names of swept flags in run names (dadpo_b0.1_t0.01) and their symbols in labels.
_SHORT = {"model.beta": ("b", "beta1"), "teacher.beta": ("t", "beta2")}


def _short(flag: str) -> str:
    return _SHORT.get(flag, (flag.replace(".", "-") + "=",))[0]


def _label_symbol(flag: str) -> str:
    return _SHORT.get(flag, (None, flag))[1]


@dataclass(frozen=True)
class Stage:
    """One stage: its name (also its ``.done`` marker and, for a trained model, its folder of run_dir),
    the task that runs it with its typed config, the files it reads and writes.

    ``job``: a training / scoring stage, started as its own job under ``launcher:`` (a DeepSpeed
    command or the Ray cluster); ``everywhere``: run on every process of this process group (training
    and scoring without a launcher), else on rank 0 while the others wait."""

    name: str
    task: str
    config: Any = None
    inputs: Tuple[str, ...] = ()
    outputs: Tuple[str, ...] = ()
    job: bool = False
    everywhere: bool = False


@dataclass(frozen=True)
class TrainRun:
    """A model trained after dSFT (daDPO, a baseline, a sweep point): its stage / folder name, its report
    label and its grid point when it belongs to a sweep."""

    name: str
    label: str
    sweep: Optional[Dict[str, Any]] = None


@dataclass(frozen=True)
class EvalPromptsStep:
    benchmark: str
    max_items: int


@dataclass(frozen=True)
class SelectStep:
    """Compare ``points`` on the validation prompts by ``metric`` (see SELECT_METRICS); link the best as
    run_dir/dadpo; write report/validation/."""

    metric: str
    teacher: str
    apply_chat_template: bool
    points: Tuple[TrainRun, ...]
    # The teacher's dtype when it scores (see _eval_dtype).
    dtype: str = "fp32"
    # A served teacher scores from its server (``teacher`` then names its tokenizer).
    served: Optional[Endpoint] = None


@dataclass(frozen=True)
class ReportStep:
    """The held-out report: ``models`` (label -> its answers file), scored against the teacher's; the
    sweep's plot when ``points`` (label -> grid point) are reported here, the selection's line when
    ``selected``."""

    teacher: str
    apply_chat_template: bool
    models: Dict[str, str]
    points: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    selected: bool = False
    # The teacher's dtype when it scores (see _eval_dtype).
    dtype: str = "fp32"
    # A served teacher scores from its server (``teacher`` then names its tokenizer).
    served: Optional[Endpoint] = None


@dataclass(frozen=True)
class RayGroup:
    """The one actor group of the stages a Ray trainer of their own does not drive (``launcher: ray``)."""

    size: int
    settings: RaySettings


@dataclass
class Plan:
    """Every stage of one run, in order, and what the runner needs besides."""

    cfg: DistillConfig
    stages: List[Stage]
    # daDPO, the baselines and the sweep points, in order.
    runs: List[TrainRun]
    # Sections checked but not used by this plan -> why (the runner says so).
    unused: Dict[str, str]
    ray_group: Optional[RayGroup] = None

    @property
    def run_dir(self) -> str:
        return self.cfg.run_dir

    @property
    def launcher(self) -> str:
        return self.cfg.launcher

    @property
    def on_ray(self) -> bool:
        return self.cfg.launcher == "ray"

    @property
    def selecting(self) -> bool:
        return bool(self.cfg.select_by)

    @property
    def names(self) -> List[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in this plan; its stages are {', '.join(self.names)}")

    def configs(self) -> Dict[str, RunConfig]:
        """Stage name -> its typed task config, for the stages that run a registry task."""
        return {s.name: s.config for s in self.stages if s.task in REGISTRY}


def _eval_dtype(cfg: DistillConfig) -> str:
    """The teacher's dtype when the report stages score with it: the run's ``ds.param_dtype`` (bf16 unless
    ``common:`` says otherwise; evaluate_responses runs fp32 on a CPU)."""
    return str(cfg.common.get("ds.param_dtype", DSConfig().param_dtype))


def plan_distill(cfg: DistillConfig, *, check_packages: bool = True) -> Plan:
    """The stages of ``cfg`` in order, every task config built and validated; :class:`ConfigError` with every
    problem of every stage (and of the sections this plan does not use) at once. ``check_packages=False``:
    optional packages the settings need are not looked for."""
    return _Planner(cfg, check_packages).plan()


class _Planner:
    def __init__(self, cfg: DistillConfig, check_packages: bool) -> None:
        self.cfg = cfg
        self.check_packages = check_packages
        self.problems: List[str] = []
        self.tasks: set = set()  # the tasks of this plan (for the check of common:)
        self.on_ray = cfg.launcher == "ray"
        self.served = served_teacher(cfg)
        if self.served is not None:  # its tokenizer here; its answers and log-probs from its server
            self.teacher = self.served.tokenizer_path
        else:
            self.teacher = self.path("teacher") if cfg.teacher.startswith("gguf:") else cfg.teacher
        self.student = cfg.student.model_name_or_path or self.path("student")

    def path(self, *parts: str) -> str:
        return os.path.join(self.cfg.run_dir, *parts)

    # ---- one task config ---------------------------------------------------------------------
    def build(
        self, where: str, task: str, *mappings: Optional[Dict[str, Any]], used: bool = True, served: bool = False
    ) -> Any:
        """``task``'s config from the ``common:`` flags it takes, ``mappings`` (later ones win) and, on Ray, the
        ``ray:`` placement flags it takes (generation also gets --generate.ray); problems kept under ``where``.
        ``common:``'s and ``ray:``'s ``vllm.*`` flags are not given to the trainers (their vLLM engine is on-policy
        daDPO's, set in its own section). ``served``: a generation stage of the served teacher, which takes no
        engine, dtype or Ray flags (the server runs the model)."""
        names = task_flags(task)
        trainer = "onpolicy.backend" in names
        skip = ("vllm.", "ds.", "generate.ray", "generate.backend") if served else ("vllm.",) if trainer else ()
        flags = {k: v for k, v in self.cfg.common.items() if k in names and not k.startswith(skip)}
        for m in mappings:
            flags.update({k: v for k, v in (m or {}).items() if not (served and k.startswith(skip))})
        if self.on_ray:
            flags.update({k: v for k, v in self.cfg.ray.items() if k in names and not k.startswith(skip)})
            if task == "generate" and not served:
                flags["generate.ray"] = True
        if served:
            flags.update({"generate.backend": "served", **self.served.flags("served")})
        if used:
            self.tasks.add(task)
        try:
            return config_from_flags(task, flags, check_paths=False, check_packages=self.check_packages)
        except ConfigError as e:
            for p in e.problems:
                line = f"{where}: {p}"
                if line not in self.problems:  # generation stages share their section: said once
                    self.problems.append(line)
            return None

    def ray_task(self, task: str) -> str:
        """The task's Ray trainer (policy, reference and teacher groups) where the registry names one."""
        return (REGISTRY[task].ray or task) if self.on_ray else task

    def training(self, name: str, task: str, *mappings: Optional[Dict[str, Any]], inputs=(), outputs=()) -> Stage:
        config = self.build(f"{name} stage", task, *mappings)
        ckpt = getattr(config, "ckpt", None)
        if hasattr(ckpt, "overwrite") and not ckpt.load_enable:
            # A stage not marked done reruns from its start: a killed attempt's files in its folder are replaced
            # (with ckpt.load_enable it resumes them). distill's lock on run_dir keeps other runs out.
            ckpt.overwrite = True
        if config is not None and self.cfg.launcher and not self.on_ray:
            try:  # the job's command line is built from the config: every value must have a flag
                config_to_flags(config)
            except ValueError as e:
                self.problems.append(f"{name} stage: {e} (launcher: starts this stage as its own command)")
        # With a launcher the jobs it starts do the multi-process work; this process only waits.
        return Stage(
            name,
            task,
            config,
            tuple(inputs),
            tuple(outputs) or (self.path(name),),
            job=True,
            everywhere=not self.cfg.launcher,
        )

    def generation(self, name: str, model: str, prompts: str, out: str) -> Stage:
        """A gen_* stage: ``model`` answers ``prompts`` into ``out`` (the served teacher from its server)."""
        served = self.served is not None and model == self.teacher
        config = self.build(
            "gen_teacher_* stages (served)" if served else "gen_* stages",
            "generate",
            {"model.model_name_or_path": model, "data.dataset": prompts, "generate.output_path": out},
            self.cfg.generate,
            served=served,
        )
        return Stage(name, "generate", config, (model, prompts), (out,))

    def teacher_flags(self) -> Dict[str, Any]:
        """The teacher of the trainers and score_logps: its folder, or its tokenizer and server."""
        served = self.served.flags("teacher") if self.served is not None else {}
        return {"teacher.model_name_or_path": self.teacher, **served}

    def served_endpoint(self) -> Optional[Endpoint]:
        """The served teacher's endpoint for the report stages' teacher NLL."""
        t = self.served
        if t is None:
            return None
        return Endpoint(
            t.base_url, t.model, t.api_key_env, t.concurrency, t.max_retries, t.timeout, "teacher.base_url (distill)"
        )

    # ---- sections that are stages of some plans ------------------------------------------------
    def score_flags(self) -> Tuple[Dict[str, Any], ...]:
        c, dsft = self.cfg, self.path("dsft")
        # The teacher and data flags of daDPO that scoring shares (not --teacher.beta).
        names = task_flags("score_logps")
        return (
            {
                "model.model_name_or_path": dsft,
                "ref.model_name_or_path": dsft,
                **PREFERENCE_SET_FLAGS,
                **self.teacher_flags(),
                "data.dataset": self.path("sets", "preference.jsonl"),
                "ckpt.output_dir": self.path("scored"),
            },
            {k: v for k, v in c.dadpo.items() if k.startswith(("teacher.", "data.")) and k in names},
            c.score,
        )

    def prune_flags(self) -> Tuple[Dict[str, Any], ...]:
        return (
            {
                "model.model_name_or_path": self.teacher,
                "data.dataset": self.path("prompts", "train.jsonl"),
                "prune.output_dir": self.path("student"),
            },
            {f"prune.{k}": v for k, v in self.cfg.student.prune.items()},
        )

    def unused(self) -> Dict[str, str]:
        """Sections this plan does not run -> why; their flags are checked all the same (a typo there is
        still an error)."""
        c = self.cfg
        out: Dict[str, str] = {}
        checks = []
        if c.score and not c.cache_logps:
            out["score"] = "cache_logps is false: daDPO scores the teacher and the reference online"
            checks.append(("score", "score_logps", self.score_flags()))
        if c.student.model_name_or_path and c.student.prune != StudentConfig().prune:
            out["student.prune"] = "student.model_name_or_path is given: nothing is pruned"
            checks.append(("student.prune", "prune", self.prune_flags()))
        for name, task, maps in checks:
            self.build(f"{name} (a section this plan does not use: {out[name]})", task, *maps, used=False)
        return out

    # ---- the runs after dSFT -----------------------------------------------------------------
    def train_runs(self) -> List[Tuple[TrainRun, Stage]]:
        """daDPO, the baselines and the sweep points, in order; each a stage and a folder of run_dir."""
        c = self.cfg
        sets = self.path("sets")
        pref = self.path("scored") if c.cache_logps else os.path.join(sets, "preference.jsonl")
        teacher = self.teacher_flags()
        from_dsft = {
            "model.model_name_or_path": self.path("dsft"),
            "ref.model_name_or_path": self.path("dsft"),
            "data.dataset": pref,
            **PREFERENCE_SET_FLAGS,
        }
        dsft_in = (self.path("dsft"), pref, self.teacher)

        def shared(source: Dict[str, Any], task: str) -> Dict[str, Any]:  # the flags of ``source`` that ``task`` takes
            names = task_flags(task)
            return {k: v for k, v in source.items() if k in names}

        out: List[Tuple[TrainRun, Stage]] = []
        # With select_by, daDPO is the grid point chosen on the validation prompts (no run of its own).
        if not c.select_by:
            out.append(
                (
                    TrainRun("dadpo", "daDPO"),
                    self.training(
                        "dadpo",
                        self.ray_task("dadpo"),
                        {**from_dsft, **teacher, "ckpt.output_dir": self.path("dadpo")},
                        c.dadpo,
                        inputs=dsft_in,
                    ),
                )
            )
        # dsft_kl takes train_kd's own --kd.coef default; train_dpo's (0) would be plain dDPO, so ddpo_kl gets the same.
        defaults = {
            "ddpo_kl": {"kd.coef": KL_BASELINE_COEF},
            "rdpo": {"model.beta": 0},
            # One round per optimizer step, answering as the student's offline answers were generated.
            "online_dadpo": {"onpolicy.round_steps": 1, **self.onpolicy_decoding()},
        }
        for name, flags in baselines_of(c).items():
            label, task = BASELINES[name]
            if self.served is not None and name in SERVED_TEACHER_REFUSES:
                self.problems.append(
                    f"baselines.{name}: {SERVED_TEACHER_REFUSES[name]}; a served teacher gives its answers and "
                    "sentence log-probs only"
                )
                continue
            dest = {"ckpt.output_dir": self.path(name)}
            if name == "dsft_kl":  # an SFT variant: from the base student, on the SFT set, like dSFT
                sft_set = os.path.join(sets, "sft.jsonl")
                base = {
                    "model.model_name_or_path": self.student,
                    **SFT_SET_FLAGS,
                    "data.dataset": sft_set,
                    **teacher,
                    **dest,
                }
                out.append(
                    (
                        TrainRun(name, label),
                        self.training(
                            name, task, base, shared(c.sft, task), flags, inputs=(self.student, sft_set, self.teacher)
                        ),
                    )
                )
                continue
            if name in ("ddpo", "rdpo"):  # dDPO+KL and on-policy rounds need the policy's process: a plain group
                task = self.ray_task(task)
            base = {**shared(from_dsft, task), **dest}
            if name in ("ddpo_kl", "rdpo", "online_dadpo"):
                base.update(teacher)
            inputs = dsft_in
            if name == "online_dadpo":  # the teacher and the reference score each round's answers online
                base["data.dataset"] = os.path.join(sets, "preference.jsonl")
                inputs = (self.path("dsft"), base["data.dataset"], self.teacher)
            out.append(
                (
                    TrainRun(name, label),
                    self.training(
                        name, task, base, shared(c.dadpo, task), defaults.get(name, {}), flags, inputs=inputs
                    ),
                )
            )
        for method, points in sweep_points(c).items():
            for point in points:
                name = method + "_" + "_".join(f"{_short(k)}{v}" for k, v in point.items())
                label = "daDPO " + " ".join(f"{_label_symbol(k)}:{v}" for k, v in point.items())
                out.append(
                    (
                        TrainRun(name, label, dict(point)),
                        self.training(
                            name,
                            self.ray_task(method),
                            {**from_dsft, **teacher, "ckpt.output_dir": self.path(name)},
                            c.dadpo,
                            point,
                            inputs=dsft_in,
                        ),
                    )
                )
        return out

    def onpolicy_decoding(self) -> Dict[str, Any]:
        """The ``generate:`` section's decoding (max_new_tokens, temperature, top_p, top_k) as on-policy flags:
        on-policy daDPO's answers are drawn as the offline student answers were."""
        g = self.cfg.generate
        keys = ("max_new_tokens", "temperature", "top_p", "top_k")
        return {f"onpolicy.{k}": g[f"generate.{k}"] for k in keys if f"generate.{k}" in g}

    # ---- the judge ---------------------------------------------------------------------------
    def judge_stages(self, models: Dict[str, Tuple[str, str]], answers_eval: Dict[str, str]) -> List[Stage]:
        """The benchmarks' answers of every model (the teacher included) and one judge stage per task (IFEval's
        scored by its checker program, without the judge); results in report/judge/ (report.json: model -> task
        -> numbers)."""
        judge_cfg, tasks, max_items = judge_settings(self.cfg)
        everyone = {"teacher": ("teacher", self.teacher), **models}
        out: List[Stage] = []
        answers: Dict[str, Dict[str, str]] = {}
        for task in ("mtbench", "alpacaeval", "ifeval"):
            if task not in tasks:
                continue
            prompts = self.path("prompts", f"{task}.jsonl")
            out.append(Stage(f"prompts_{task}", "eval_prompts", EvalPromptsStep(task, max_items), (), (prompts,)))
            answers[task] = {}
            for label, (name, model) in everyone.items():
                answers[task][label] = self.path("gen", f"{name}_{task}.jsonl")
                out.append(self.generation(f"gen_{name}_{task}", model, prompts, answers[task][label]))
            self.check_bench_context(task, out[-1].config)
        if "indomain" in tasks:
            answers["indomain"] = dict(answers_eval)
        for task in tasks:
            config = JudgeTaskConfig(
                task=task,
                candidate=tuple(f"{k}={v}" for k, v in answers[task].items()),
                teacher_responses=self.path("gen", "teacher_eval.jsonl"),
                prompts=self.path("prompts", "eval.jsonl"),
                output_dir=self.path("report", "judge"),
                max_items=max_items,
                judge=JudgeConfig() if task in PROGRAM_SCORED_TASKS else judge_cfg,
            )
            out.append(
                Stage(f"judge_{task}", "judge", config, tuple(answers[task].values()), (self.path("report", "judge"),))
            )
        return out

    def check_bench_context(self, task: str, config) -> None:
        """A ``generate:`` section whose ``vllm.max_model_len`` (sized for the training prompts) cannot hold a
        benchmark's answers is refused here, not when the benchmark's stage starts after the training."""
        if config is None:  # its problems are already kept
            return
        g, max_len = config.generate, config.vllm.max_model_len
        if not (g.backend == "vllm" or (g.backend == "auto" and has_package("vllm"))):
            return
        new = BENCH_MAX_NEW_TOKENS[task] if g.row_settings else g.max_new_tokens
        need = BENCH_TURNS[task] * new + BENCH_PROMPT_ROOM
        whose = {"mtbench": "FastChat's setting", "alpacaeval": "the leaderboard's common setting"}.get(
            task, "its harnesses' setting"
        )
        if 0 < max_len < need:
            self.problems.append(
                f"gen_*_{task} stages: generate: vllm.max_model_len {max_len} is too small for {task}'s answers "
                f"({BENCH_TURNS[task]} x up to {new} new tokens, {whose if g.row_settings else 'generate.max_new_tokens'}"
                f", and up to {BENCH_PROMPT_ROOM} prompt tokens): set it to {need} or more, or 0 for the model's own "
                "context"
            )

    # ---- the whole plan ----------------------------------------------------------------------
    def plan(self) -> Plan:
        c = self.cfg
        stages: List[Stage] = []
        if self.served is None and c.teacher.startswith("gguf:"):
            stages.append(Stage("teacher", "gguf_convert", c.teacher[len("gguf:") :], (), (self.teacher,)))
        train_p, eval_p, val_p = (self.path("prompts", f"{s}.jsonl") for s in ("train", "eval", "val"))
        stages.append(
            Stage(
                "prompts",
                "prepare_prompts",
                c.prompts,
                (),
                (train_p, eval_p) + ((val_p,) if c.prompts.val_size else ()),
            )
        )
        if not c.student.model_name_or_path:
            stages.append(
                Stage(
                    "student",
                    "prune",
                    self.build("student stage", "prune", *self.prune_flags()),
                    (self.teacher, train_p),
                    (self.student,),
                )
            )
        gen_t, gen_s = self.path("gen", "teacher_train.jsonl"), self.path("gen", "student_train.jsonl")
        stages.append(self.generation("gen_teacher_train", self.teacher, train_p, gen_t))
        stages.append(self.generation("gen_student_train", self.student, train_p, gen_s))
        sft_set, pref_set = self.path("sets", "sft.jsonl"), self.path("sets", "preference.jsonl")
        stages.append(Stage("sets", "build_sets", c.sets, (gen_t, gen_s), (pref_set, sft_set)))

        stages.append(
            self.training(
                "dsft",
                "sft",
                {
                    "model.model_name_or_path": self.student,
                    **SFT_SET_FLAGS,
                    "data.dataset": sft_set,
                    "ckpt.output_dir": self.path("dsft"),
                },
                c.sft,
                inputs=(self.student, sft_set),
            )
        )
        if c.cache_logps:  # scored once; every run below reads the same cached log-probs
            stages.append(
                self.training(
                    "score",
                    "score_logps",
                    *self.score_flags(),
                    inputs=(self.path("dsft"), pref_set, self.teacher),
                    outputs=(self.path("scored"),),
                )
            )
        models = {"base": ("base", self.student), "dSFT": ("dsft", self.path("dsft"))}
        if c.select_by:  # run_dir/dadpo becomes the chosen grid point (the select stage links it)
            models["daDPO"] = ("dadpo", self.path("dadpo"))
        runs = self.train_runs()
        for run, stage in runs:
            stages.append(stage)
            if not (c.select_by and run.sweep):
                models[run.label] = (run.name, self.path(run.name))
        apply = bool(c.common.get("data.apply_chat_template", False))
        dtype = _eval_dtype(c)
        if c.select_by:
            gen_tv = self.path("gen", "teacher_val.jsonl")
            stages.append(self.generation("gen_teacher_val", self.teacher, val_p, gen_tv))
            points = tuple(run for run, _ in runs if run.sweep)
            answers = []
            for run in points:
                answers.append(self.path("gen", f"{run.name}_val.jsonl"))
                stages.append(self.generation(f"gen_{run.name}_val", self.path(run.name), val_p, answers[-1]))
            stages.append(
                Stage(
                    "select",
                    "select",
                    SelectStep(c.select_by, self.teacher, apply, points, dtype, self.served_endpoint()),
                    (gen_tv, val_p, *answers),
                    (self.path("dadpo"), self.path("report", "validation")),
                )
            )

        gen_te = self.path("gen", "teacher_eval.jsonl")
        stages.append(self.generation("gen_teacher_eval", self.teacher, eval_p, gen_te))
        labels: Dict[str, str] = {}
        for label, (name, model) in models.items():
            labels[label] = self.path("gen", f"{name}_eval.jsonl")
            stages.append(self.generation(f"gen_{name}_eval", model, eval_p, labels[label]))
        if c.judge is not None:
            stages += self.judge_stages(models, labels)
        points_here = {} if c.select_by else {run.label: run.sweep for run, _ in runs if run.sweep}
        report = ReportStep(self.teacher, apply, labels, points_here, bool(c.select_by), dtype, self.served_endpoint())
        stages.append(Stage("report", "report", report, (gen_te, eval_p, *labels.values()), (self.path("report"),)))

        unused = self.unused()
        self.problems += [
            f"common: {k}: no stage of this run takes it"
            for k in c.common
            if not any(k in task_flags(t) for t in self.tasks)
        ]
        if self.problems:
            raise ConfigError(self.problems)
        return Plan(c, stages, [run for run, _ in runs], unused, self.ray_group())

    def ray_group(self) -> Optional[RayGroup]:
        """The size and cluster settings of the one actor group (``ray:``'s actor.* and ray.* flags)."""
        if not self.on_ray:
            return None
        r = self.cfg.ray
        actor = RayGroupConfig(**{k[len("actor.") :]: v for k, v in r.items() if k.startswith("actor.")})
        settings = RaySettings(**{k[len("ray.") :]: v for k, v in r.items() if k.startswith("ray.")})
        return RayGroup(actor.num_nodes * actor.num_gpus_per_node, settings)
