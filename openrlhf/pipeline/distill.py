"""Algorithm 1 from one YAML file.

Stages, each writing into ``run_dir`` and skipped when its output is complete (a marker
``run_dir/.done/<stage>`` is written after the stage succeeds), so a killed run resumes:

    teacher    HF folder of the teacher (converted from GGUF when asked)
    prompts    ShareGPT first human turns -> prompts/train.jsonl, prompts/eval.jsonl
    student    the student (a pruned teacher when no student path is given)
    gen_*      greedy responses: teacher and student on train prompts, all models on eval prompts
    sets       preference set (teacher chosen, student rejected) and SFT set
    dsft       SFT of the student on the teacher's responses -> pi_sft (policy init and reference)
    score      (cache_logps) teacher and reference log-probs cached once, for every run below
    dadpo      daDPO from pi_sft with the teacher frozen
    <baseline> (``baselines:``) dsft_kl (SFT+KL from the base student, like dSFT), ddpo, ddpo_kl,
               rdpo, dkto (from pi_sft); ``ddpo:`` alone is the dDPO baseline
    <point>    (``sweep:``) one daDPO run per grid point, e.g. dadpo_b0.1_t0.01
    report     ROUGE-L vs the teacher and the teacher's NLL for every model (+ the beta plot)

Multi-process training, two ways:

- ``launcher: "deepspeed --num_gpus 8"`` in the YAML (the GPU way): this process runs the
  light stages and generation (vLLM may use every GPU), and each training / scoring stage
  is started as its own job, ``<launcher> --module openrlhf.cli.train_sft <flags>``;
- launched itself under ``deepspeed --num_gpus N --module openrlhf.cli.distill``: the
  training and scoring stages run on every process (DeepSpeed data parallel) and the other
  stages on rank 0 while the others wait at a barrier (fine on CPU and for short
  generation; a generation longer than the process group's timeout would end the run).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from openrlhf.config.parse import ConfigError, load_config, task_flags
from openrlhf.config.schema import (
    KL_BASELINE_COEF,
    RAY_TASKS,
    REGISTRY,
    DSConfig,
    JudgeTaskConfig,
    RayGroupConfig,
    RaySettings,
)
from openrlhf.eval.run import judge, write_prompts
from openrlhf.generation.sets import PREFERENCE_SET_FLAGS, SFT_SET_FLAGS, build_sets
from openrlhf.generation.sharegpt import prepare_prompts
from openrlhf.pipeline.config import (
    BASELINES,
    SELECT_METRICS,
    DistillConfig,
    StudentConfig,
    baselines_of,
    judge_settings,
    sweep_points,
    to_flags,
)
from openrlhf.pipeline.sweep import write_sweep_report
from openrlhf.recipes import recipe_of
from openrlhf.recipes.common import make_strategy
from openrlhf.recipes.generate import generate
from openrlhf.recipes.ray_launch import run_recipe_on_ray
from openrlhf.tools.evaluate import evaluate_responses
from openrlhf.tools.gguf_convert import convert_gguf, resolve_gguf
from openrlhf.tools.prune import prune
from openrlhf.utils.paths import output_dir_problem

# Short names of swept flags in run names (dadpo_b0.1_t0.01) and their symbols in labels.
_SHORT = {"model.beta": ("b", "beta1"), "teacher.beta": ("t", "beta2")}


def _short(flag: str) -> str:
    return _SHORT.get(flag, (flag.replace(".", "-") + "=",))[0]


def _label_symbol(flag: str) -> str:
    return _SHORT.get(flag, (None, flag))[1]


@dataclass
class TrainRun:
    """A training stage after dSFT: its stage / folder name, its report label, its task and
    flag mappings (after ``common``), and its grid point when it belongs to a sweep."""

    name: str
    label: str
    task: str
    maps: tuple
    sweep: Optional[Dict[str, Any]] = None


class Pipeline:
    def __init__(self, cfg: DistillConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.run = cfg.run_dir
        self.log = log
        self.strategy = None
        self.timings: Dict[str, float] = {}

    # ---- paths ---------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.run, *parts)

    @property
    def teacher_path(self) -> str:
        t = self.cfg.teacher
        return self.path("teacher") if t.startswith("gguf:") else t

    @property
    def student_path(self) -> str:
        return self.cfg.student.model_name_or_path or self.path("student")

    # ---- configs of the stage CLIs ---------------------------------------------------------
    def _common_for(self, task: str) -> Dict:
        """The ``common:`` flags that ``task`` has (a --train.* flag does not go to generate)."""
        names = task_flags(task)
        return {k: v for k, v in self.cfg.common.items() if k in names}

    def stage_config(self, task: str, *mappings: Dict, check_paths: bool = False, check_packages: bool = True):
        return load_config(to_flags(self._common_for(task), *mappings, self._ray_for(task)), task=task,
                           check_paths=check_paths, check_packages=check_packages)

    # ---- launcher: ray ----------------------------------------------------------------------
    @property
    def on_ray(self) -> bool:
        return self.cfg.launcher == "ray"

    def _ray_for(self, task: str) -> Dict:
        """The ``ray:`` placement flags that ``task`` takes (generation also gets --generate.ray)."""
        if not self.on_ray:
            return {}

        names = task_flags(task)
        out = {k: v for k, v in self.cfg.ray.items() if k in names}
        if task == "generate":
            out["generate.ray"] = True
        return out

    def _ray_task(self, task: str) -> str:
        """The task's Ray trainer (policy, reference and teacher groups) where the registry names one."""
        return (REGISTRY[task].ray or task) if self.on_ray else task

    def _ray_group(self):
        """(actors per group, RaySettings) of the stages run on one actor group."""
        r = self.cfg.ray
        actor = RayGroupConfig(**{k[len("actor."):]: v for k, v in r.items() if k.startswith("actor.")})
        settings = RaySettings(**{k[len("ray."):]: v for k, v in r.items() if k.startswith("ray.")})
        return actor.num_nodes * actor.num_gpus_per_node, settings

    def planned_configs(self, check_packages: bool = True) -> Dict[str, object]:
        """Every stage's config, built up front so bad flags fail before any work: the problems
        of all stages are reported together, each line naming its stage."""
        configs: Dict[str, object] = {}
        problems: List[str] = []
        plan = self._plan()
        for name, (task, maps) in plan.items():
            try:
                configs[name] = self.stage_config(task, *maps, check_packages=check_packages)
            except ConfigError as e:
                problems += [f"{name} stage: {p}" for p in e.problems]
        for name, ((task, maps), why) in self.unused_sections().items():
            try:
                self.stage_config(task, *maps, check_packages=check_packages)
            except ConfigError as e:
                problems += [f"{name} (a section this plan does not use: {why}): {p}" for p in e.problems]
        used = set().union(*(task_flags(task) for task, _ in plan.values()))
        problems += [f"common: {k}: no stage of this run takes it" for k in self.cfg.common if k not in used]
        if problems:
            raise ConfigError(problems)
        return configs

    def _plan(self) -> Dict[str, tuple]:
        """Stage name -> (task, the flag mappings after ``common``), for every stage with flags."""

        c = self.cfg
        dsft, sets = self.path("dsft"), self.path("sets")
        out = {
            "gen": ("generate", ({"model.model_name_or_path": self.teacher_path,
                                  "data.dataset": self.path("prompts", "train.jsonl"),
                                  "generate.output_path": self.path("gen", "x.jsonl")}, c.generate)),
            "dsft": ("sft", ({"model.model_name_or_path": self.student_path, **SFT_SET_FLAGS,
                              "data.dataset": os.path.join(sets, "sft.jsonl"), "ckpt.output_dir": dsft}, c.sft)),
        }
        if c.cache_logps:
            out["score"] = self._score_stage()
        for run in self.train_runs():
            out[run.name] = (run.task, run.maps)
        if not c.student.model_name_or_path:
            out["student"] = self._prune_stage()
        return out

    def _score_stage(self) -> tuple:
        c, dsft = self.cfg, self.path("dsft")
        # The teacher and data flags of daDPO that scoring shares (not --teacher.beta).
        score_flags = task_flags("score_logps")
        return ("score_logps", (
            {"model.model_name_or_path": dsft, "ref.model_name_or_path": dsft, **PREFERENCE_SET_FLAGS,
             "teacher.model_name_or_path": self.teacher_path,
             "data.dataset": os.path.join(self.path("sets"), "preference.jsonl"), "ckpt.output_dir": self.path("scored")},
            {k: v for k, v in c.dadpo.items() if k.startswith(("teacher.", "data.")) and k in score_flags}, c.score))

    def _prune_stage(self) -> tuple:
        return ("prune", ({"model.model_name_or_path": self.teacher_path,
                           "data.dataset": self.path("prompts", "train.jsonl"),
                           "prune.output_dir": self.path("student")},
                          {f"prune.{k}": v for k, v in self.cfg.student.prune.items()}))

    def unused_sections(self) -> Dict[str, tuple]:
        """Sections of the YAML that this plan does not run: name -> ((task, maps) as a stage would use
        them, why). Their flags are checked all the same (a typo there is still an error)."""
        c = self.cfg
        out: Dict[str, tuple] = {}
        if c.score and not c.cache_logps:
            out["score"] = (self._score_stage(), "cache_logps is false: daDPO scores the teacher and the reference "
                                                 "online")
        if c.student.model_name_or_path and c.student.prune != StudentConfig().prune:
            out["student.prune"] = (self._prune_stage(), "student.model_name_or_path is given: nothing is pruned")
        return out

    def train_runs(self) -> List["TrainRun"]:
        """daDPO, the baselines and the sweep points, in order; each a stage and a folder of run_dir."""
        c = self.cfg
        dsft, sets = self.path("dsft"), self.path("sets")
        pref = self.path("scored") if c.cache_logps else os.path.join(sets, "preference.jsonl")
        teacher = {"teacher.model_name_or_path": self.teacher_path}
        from_dsft = {"model.model_name_or_path": dsft, "ref.model_name_or_path": dsft, "data.dataset": pref,
                     **PREFERENCE_SET_FLAGS}

        def shared(source: Dict, task: str) -> Dict:  # the flags of ``source`` that ``task`` takes
            names = task_flags(task)
            return {k: v for k, v in source.items() if k in names}

        # With select_by, daDPO is the grid point chosen on the validation prompts (no run of its own).
        runs = [] if self.selecting else [TrainRun("dadpo", "daDPO", self._ray_task("dadpo"),
                                                   ({**from_dsft, **teacher, "ckpt.output_dir": self.path("dadpo")},
                                                    c.dadpo))]
        # dsft_kl takes train_kd's own --kd.coef default; train_dpo's (0) would be plain dDPO, so ddpo_kl gets the same.
        defaults = {"ddpo_kl": {"kd.coef": KL_BASELINE_COEF}, "rdpo": {"model.beta": 0}}
        for name, flags in baselines_of(c).items():
            label, task = BASELINES[name]
            out = {"ckpt.output_dir": self.path(name)}
            if name == "dsft_kl":  # an SFT variant: from the base student, on the SFT set, like dSFT
                base = {"model.model_name_or_path": self.student_path, **SFT_SET_FLAGS,
                        "data.dataset": os.path.join(sets, "sft.jsonl"), **teacher, **out}
                runs.append(TrainRun(name, label, task, (base, shared(c.sft, task), flags)))
                continue
            if name in ("ddpo", "rdpo"):  # dDPO+KL needs the teacher's logits in the policy: a plain group
                task = self._ray_task(task)
            base = {**shared(from_dsft, task), **out}
            if name in ("ddpo_kl", "rdpo"):
                base.update(teacher)
            runs.append(TrainRun(name, label, task, (base, shared(c.dadpo, task), defaults.get(name, {}), flags)))
        for method, points in sweep_points(c).items():
            for point in points:
                name = method + "_" + "_".join(f"{_short(k)}{v}" for k, v in point.items())
                label = "daDPO " + " ".join(f"{_label_symbol(k)}:{v}" for k, v in point.items())
                runs.append(TrainRun(name, label, self._ray_task(method),
                                     ({**from_dsft, **teacher, "ckpt.output_dir": self.path(name)}, c.dadpo, point),
                                     sweep=dict(point)))
        return runs

    def _train(self, name: str, cfg) -> Callable[[], None]:
        """A training / scoring stage: in this process, or through ``launcher`` as its own job."""
        task, maps = self._plan()[name]

        def run() -> None:
            if self.on_ray:
                if task in RAY_TASKS:  # this process drives the policy / frozen groups
                    recipe_of(task)(cfg)
                else:
                    size, settings = self._ray_group()
                    run_recipe_on_ray(task, cfg, size, settings, name=name)
            elif self.cfg.launcher:
                cmd = shlex.split(self.cfg.launcher) + ["--module", REGISTRY[task].module,
                                                         *to_flags(self._common_for(task), *maps)]
                self.log(f"[distill] {name}: {' '.join(shlex.quote(x) for x in cmd)}")
                subprocess.run(cmd, check=True)
            else:
                recipe_of(task)(cfg)
        return run

    # ---- choosing daDPO's hyper-parameters on the validation prompts ------------------------
    @property
    def selecting(self) -> bool:
        return bool(self.cfg.select_by)

    def _select(self) -> None:
        """Evaluate every grid point on the validation prompts, link the best (by ``select_by``) as
        run_dir/dadpo and write report/validation/ (the report, sweep.{json,md,png}, selection.json)."""
        runs = [run for run in self.train_runs() if run.sweep]
        folder = self.path("report", "validation")
        apply = bool(self.cfg.common.get("data.apply_chat_template", False))
        report = evaluate_responses(self.teacher_path, self.path("gen", "teacher_val.jsonl"),
                                    {run.label: self.path("gen", f"{run.name}_val.jsonl") for run in runs}, folder,
                                    apply_chat_template=apply, prompts=self.path("prompts", "val.jsonl"),
                                    compare_to=None, dtype=self.eval_dtype())
        metric = self.cfg.select_by
        sign = 1 if SELECT_METRICS[metric] else -1
        best = max(runs, key=lambda run: sign * report["models"][run.label][metric])
        write_sweep_report(report, {run.label: run.sweep for run in runs}, folder)
        choice = {"metric": metric, "higher_is_better": SELECT_METRICS[metric], "chosen": best.name,
                  "label": best.label, "point": best.sweep, "validation_prompts": report["num_rows"],
                  "values": {run.name: report["models"][run.label][metric] for run in runs}}
        with open(os.path.join(folder, "selection.json"), "w") as f:
            json.dump(choice, f, indent=2)
        link = self.path("dadpo")
        if os.path.islink(link):
            os.remove(link)
        os.symlink(best.name, link)  # relative: the run folder can move
        self.log(f"[distill] select: {best.label} has the best validation {metric} "
                 f"({report['models'][best.label][metric]:.4f} on {report['num_rows']} prompts): it is daDPO")

    # ---- stage bookkeeping -----------------------------------------------------------------
    def _done_marker(self, name: str) -> str:
        return self.path(".done", name)

    def is_done(self, name: str) -> bool:
        return os.path.exists(self._done_marker(name))

    def _barrier(self) -> None:
        if self.strategy is not None:
            self.strategy.barrier()

    def _rank0(self) -> bool:
        return self.strategy is None or self.strategy.is_rank_0()

    def stage(self, name: str, fn: Callable[[], None], everywhere: bool = False) -> None:
        """Run ``fn`` unless the stage is done; on rank 0 only unless ``everywhere``."""
        if self.is_done(name):
            self.log(f"[distill] {name}: done before, skipped")
            return
        self.log(f"[distill] {name}: running")
        t0 = time.time()
        if everywhere or self._rank0():
            fn()
        self._barrier()
        self.timings[name] = round(time.time() - t0, 1)
        if self._rank0():
            os.makedirs(self.path(".done"), exist_ok=True)
            with open(self._done_marker(name), "w") as f:
                json.dump({"seconds": self.timings[name]}, f)
        self._barrier()

    # ---- the stages ------------------------------------------------------------------------
    def _teacher(self) -> None:
        convert_gguf(resolve_gguf(self.cfg.teacher[len("gguf:"):]), self.teacher_path, overwrite=True)

    def _prompts(self) -> None:
        p = self.cfg.prompts
        prepare_prompts(None if p.source == "sharegpt" else p.source, self.path("prompts"),
                        eval_size=p.eval_size, seed=p.seed, min_chars=p.min_chars, max_chars=p.max_chars,
                        max_prompts=p.train_size + p.eval_size + p.val_size, val_size=p.val_size, log=self.log)

    def _student(self, cfg) -> Callable[[], None]:
        def run() -> None:
            prune(cfg)
        return run

    def _generate(self, model: str, prompts: str, out: str) -> Callable[[], None]:
        def run() -> None:
            generate(self.stage_config("generate", {"model.model_name_or_path": model, "data.dataset": prompts,
                                                    "generate.output_path": out}, self.cfg.generate), log=self.log)
        return run

    def _sets(self) -> None:
        build_sets(self.path("gen", "teacher_train.jsonl"), self.path("gen", "student_train.jsonl"),
                   self.path("sets"), log=self.log, keep_unfinished=self.cfg.sets.keep_unfinished)

    def eval_dtype(self) -> str:
        """The teacher's dtype when the report stages score with it: the run's ``ds.param_dtype`` (bf16 unless
        ``common:`` says otherwise; evaluate_responses runs fp32 on a CPU)."""
        return str(self.cfg.common.get("ds.param_dtype", DSConfig().param_dtype))

    def _report(self, labels: Dict[str, str]) -> None:
        apply = bool(self.cfg.common.get("data.apply_chat_template", False))
        report = evaluate_responses(self.teacher_path, self.path("gen", "teacher_eval.jsonl"), labels,
                                    self.path("report"), apply_chat_template=apply,
                                    prompts=self.path("prompts", "eval.jsonl"), dtype=self.eval_dtype())
        judged = os.path.join(self.path("report", "judge"), "report.md")
        if os.path.exists(judged):  # the LLM-judge table (judge:), the paper's Table 1 layout
            with open(self.path("report", "report.md"), "a", encoding="utf-8") as f, open(judged, encoding="utf-8") as g:
                f.write("\n## LLM judge\n\n" + g.read())
        points = {run.label: run.sweep for run in self.train_runs() if run.sweep}
        if self.selecting:  # the grid was compared on the validation prompts only
            with open(self.path("report", "validation", "selection.json")) as f:
                choice = json.load(f)
            with open(self.path("report", "report.md"), "a", encoding="utf-8") as f:
                f.write(f"\ndaDPO is {choice['label']}: the best validation {choice['metric']} of the grid on "
                        f"{choice['validation_prompts']} validation prompts (report/validation/).\n")
        elif points:
            write_sweep_report(report, points, self.path("report"))
            self.log(f"[distill] beta ablation: {self.path('report', 'sweep.png')}")
        with open(self.path("report", "timings.json"), "w") as f:
            json.dump(self.timings, f, indent=2)
        self.log(f"[distill] report: {self.path('report', 'report.md')}")

    def stages(self, configs: Dict[str, object]) -> List[Tuple[str, Callable[[], None], bool]]:
        """Every stage in order: (name, body, runs on every process)."""
        c = self.cfg
        out: List[Tuple[str, Callable[[], None], bool]] = []
        if c.teacher.startswith("gguf:"):
            out.append(("teacher", self._teacher, False))
        out.append(("prompts", self._prompts, False))
        if not c.student.model_name_or_path:
            out.append(("student", self._student(configs["student"]), False))
        train_p, eval_p = self.path("prompts", "train.jsonl"), self.path("prompts", "eval.jsonl")
        out.append(("gen_teacher_train", self._generate(self.teacher_path, train_p,
                                                        self.path("gen", "teacher_train.jsonl")), False))
        out.append(("gen_student_train", self._generate(self.student_path, train_p,
                                                        self.path("gen", "student_train.jsonl")), False))
        out.append(("sets", self._sets, False))

        # With a launcher the jobs it starts do the multi-process work; this process only waits.
        everywhere = not c.launcher
        out.append(("dsft", self._train("dsft", configs["dsft"]), everywhere))
        if c.cache_logps:  # scored once; every run below reads the same cached log-probs
            out.append(("score", self._train("score", configs["score"]), everywhere))
        models = {"base": ("base", self.student_path), "dSFT": ("dsft", self.path("dsft"))}
        if self.selecting:  # run_dir/dadpo becomes the chosen grid point (the select stage links it)
            models["daDPO"] = ("dadpo", self.path("dadpo"))
        for run in self.train_runs():
            out.append((run.name, self._train(run.name, configs[run.name]), everywhere))
            if not (self.selecting and run.sweep):
                models[run.label] = (run.name, self.path(run.name))
        if self.selecting:
            val_p = self.path("prompts", "val.jsonl")
            out.append(("gen_teacher_val", self._generate(self.teacher_path, val_p,
                                                          self.path("gen", "teacher_val.jsonl")), False))
            for run in self.train_runs():
                if run.sweep:
                    out.append((f"gen_{run.name}_val", self._generate(self.path(run.name), val_p,
                                                                      self.path("gen", f"{run.name}_val.jsonl")), False))
            out.append(("select", self._select, False))

        out.append(("gen_teacher_eval", self._generate(self.teacher_path, eval_p,
                                                       self.path("gen", "teacher_eval.jsonl")), False))
        labels = {}
        for label, (name, model) in models.items():
            labels[label] = self.path("gen", f"{name}_eval.jsonl")
            out.append((f"gen_{name}_eval", self._generate(model, eval_p, labels[label]), False))
        if c.judge is not None:
            out += self._judge_stages(models, labels)
        out.append(("report", lambda: self._report(labels), False))
        return out

    def _judge_stages(self, models: Dict[str, Tuple[str, str]], labels: Dict[str, str]) -> List[tuple]:
        """The benchmarks' answers of every model (the teacher included) and one judge stage per task;
        results in report/judge/ (report.json: model -> task -> numbers)."""
        judge_cfg, tasks, max_items = judge_settings(self.cfg)
        everyone = {"teacher": ("teacher", self.teacher_path), **models}
        out: List[tuple] = []
        answers: Dict[str, Dict[str, str]] = {}
        for task in ("mtbench", "alpacaeval"):
            if task not in tasks:
                continue
            prompts = self.path("prompts", f"{task}.jsonl")
            out.append((f"prompts_{task}", self._eval_prompts(task, prompts, max_items), False))
            answers[task] = {}
            for label, (name, model) in everyone.items():
                answers[task][label] = self.path("gen", f"{name}_{task}.jsonl")
                out.append((f"gen_{name}_{task}", self._generate(model, prompts, answers[task][label]), False))
        if "indomain" in tasks:
            answers["indomain"] = dict(labels)
        for task in tasks:
            out.append((f"judge_{task}", self._judge(task, judge_cfg, answers[task], max_items), False))
        return out

    def _eval_prompts(self, task: str, path: str, max_items: int) -> Callable[[], None]:
        def run() -> None:
            write_prompts(task, path, max_items)
        return run

    def _judge(self, task: str, judge_cfg, candidates: Dict[str, str], max_items: int) -> Callable[[], None]:
        def run() -> None:
            cfg = JudgeTaskConfig(task=task, candidate=tuple(f"{k}={v}" for k, v in candidates.items()),
                                  teacher_responses=self.path("gen", "teacher_eval.jsonl"),
                                  prompts=self.path("prompts", "eval.jsonl"), output_dir=self.path("report", "judge"),
                                  max_items=max_items, judge=judge_cfg)
            judge(cfg, log=self.log)
        return run

    def run_all(self, stop_after: str = "") -> Dict[str, float]:
        """Run every stage not done yet (up to and including ``stop_after`` when given)."""
        configs = self.planned_configs()  # every stage's flags checked before any work
        plan = self.stages(configs)
        names = [name for name, _, _ in plan]
        if stop_after and stop_after not in names:
            raise ConfigError([f"--stop_after: unknown stage {stop_after!r}; the stages of this run are "
                               f"{', '.join(names)}"])

        problem = output_dir_problem(self.run)
        if problem:
            raise ConfigError([f"run_dir: {problem}"])
        if self.cfg.teacher.startswith("gguf:") and not self.is_done("teacher"):
            resolve_gguf(self.cfg.teacher[len("gguf:"):])  # a missing package or file: one line, before any work
        os.makedirs(self.run, exist_ok=True)
        # One process group for the whole pipeline (the training stages join it).
        self.strategy = make_strategy(configs["dsft"], training=False)
        if not self._rank0():
            self.log = lambda *_: None  # one voice: rank 0 reports
        for name, (_, why) in self.unused_sections().items():
            self.log(f"[distill] note: the {name}: section is not used by this plan ({why}); its flags were checked")
        for name, body, everywhere in plan:
            self.stage(name, body, everywhere=everywhere)
            if name == stop_after:
                self.log(f"[distill] stopped after {name} (--stop_after); run again without it to go on")
                break
        return self.timings
