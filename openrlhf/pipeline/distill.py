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

The stages are planned by :func:`openrlhf.pipeline.plan.plan_distill` (every stage's typed config,
validated at once, before anything runs); :class:`Runner` executes that plan: in this process, through
``launcher:`` (the stage's config as flags of its command, :func:`launch_command`) or on Ray, keeps the
``.done`` markers and writes the report.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from typing import Callable, Dict, List

from openrlhf.config.parse import ConfigError, config_to_flags
from openrlhf.config.schema import RAY_TASKS, REGISTRY, RunConfig
from openrlhf.eval.offline import evaluate_responses
from openrlhf.eval.run import write_prompts
from openrlhf.generation.sets import build_sets
from openrlhf.generation.sharegpt import prepare_prompts
from openrlhf.pipeline.config import SELECT_METRICS, DistillConfig
from openrlhf.pipeline.plan import Plan, ReportStep, SelectStep, Stage, plan_distill
from openrlhf.pipeline.sweep import write_sweep_report
from openrlhf.pipeline.tasks import runner_of
from openrlhf.recipes.common import claim_on_rank_0, make_strategy
from openrlhf.recipes.ray_launch import run_recipe_on_ray
from openrlhf.tools.gguf_convert import convert_gguf, resolve_gguf
from openrlhf.utils.paths import output_dir_problem
from openrlhf.utils.run_folder import take_lock

# Registry tasks whose recipe takes the pipeline's log function.
_LOGGING_TASKS = ("generate", "judge")


def launch_command(launcher: str, task: str, cfg: RunConfig) -> List[str]:
    """The command that runs ``task`` on ``cfg`` as its own job: ``<launcher> --module openrlhf.cli.<command>``
    and the flags that rebuild ``cfg`` there (the one place a stage's config becomes a command line)."""
    return shlex.split(launcher) + ["--module", REGISTRY[task].module, *config_to_flags(cfg)]


def run_distill(cfg: DistillConfig, log: Callable[[str], None] = print, stop_after: str = "") -> Dict[str, float]:
    """Plan ``cfg`` (every problem of every stage at once, before any work) and run the plan."""
    return Runner(plan_distill(cfg), log=log).run(stop_after=stop_after)


def _run_command(cmd: List[str], grace_s: float = 120.0) -> None:
    """Run a stage's launcher command; a :class:`subprocess.CalledProcessError` when it fails. Interrupted here
    (Ctrl-C, or SIGTERM turned into one), the launcher gets SIGTERM (it passes it on to every rank, each of which
    stops cleanly) and ``grace_s`` to end before it is killed: no rank outlives this process."""
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)


class Runner:
    """Executes a :class:`~openrlhf.pipeline.plan.Plan`: each stage not done yet (``run_dir/.done/<stage>``,
    written after the stage succeeds), on rank 0 or on every process; ``timings`` holds the seconds of each
    stage run now."""

    def __init__(self, plan: Plan, log: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.log = log
        self.strategy = None
        self.timings: Dict[str, float] = {}

    def path(self, *parts: str) -> str:
        return os.path.join(self.plan.run_dir, *parts)

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

    def run_stage(self, stage: Stage) -> None:
        """Run ``stage`` unless it is done; on rank 0 only unless ``stage.everywhere``."""
        name = stage.name
        if self.is_done(name):
            self.log(f"[distill] {name}: done before, skipped")
            return
        self.log(f"[distill] {name}: running")
        t0 = time.time()
        if stage.everywhere or self._rank0():
            self.execute(stage)
        self._barrier()
        self.timings[name] = round(time.time() - t0, 1)
        if self._rank0():
            os.makedirs(self.path(".done"), exist_ok=True)
            with open(self._done_marker(name), "w") as f:
                json.dump({"seconds": self.timings[name]}, f)
        self._barrier()

    def run(self, stop_after: str = "") -> Dict[str, float]:
        """Run every stage not done yet (up to and including ``stop_after`` when given)."""
        plan = self.plan
        if stop_after and stop_after not in plan.names:
            raise ConfigError(
                [f"--stop_after: unknown stage {stop_after!r}; the stages of this run are {', '.join(plan.names)}"]
            )
        problem = output_dir_problem(plan.run_dir)
        if problem:
            raise ConfigError([f"run_dir: {problem}"])
        if "teacher" in plan.names and not self.is_done("teacher"):
            resolve_gguf(plan.stage("teacher").config)  # a missing package or file: one line, before any work
        os.makedirs(plan.run_dir, exist_ok=True)
        # One process group for the whole pipeline (the training stages join it).
        self.strategy = make_strategy(plan.stage("dsft").config, training=False)
        if not self._rank0():
            self.log = lambda *_: None  # one voice: rank 0 reports
        # run_dir resumes by design (finished stages are skipped); only a second distill into it is refused.
        lock = claim_on_rank_0(
            self.strategy, lambda: take_lock(plan.run_dir, what="run_dir", log=self.log), f"run_dir {plan.run_dir}"
        )
        try:
            for name, why in plan.unused.items():
                self.log(
                    f"[distill] note: the {name}: section is not used by this plan ({why}); its flags were checked"
                )
            for stage in plan.stages:
                self.run_stage(stage)
                if stage.name == stop_after:
                    self.log(f"[distill] stopped after {stage.name} (--stop_after); run again without it to go on")
                    break
        finally:
            if lock is not None:
                lock.release()
        return self.timings

    # ---- executing one stage -----------------------------------------------------------------
    def execute(self, stage: Stage) -> None:
        """Run one stage now: a registry task through :meth:`_task`, else the pipeline's own step (STEPS)."""
        steps = {
            "gguf_convert": self._gguf_convert,
            "prepare_prompts": self._prepare_prompts,
            "build_sets": self._build_sets,
            "eval_prompts": self._eval_prompts,
            "select": self._select,
            "report": self._report,
        }
        (self._task if stage.task in REGISTRY else steps[stage.task])(stage)

    def _task(self, stage: Stage) -> None:
        """A registry task: a training / scoring job through ``launcher:`` (Ray, or a command), else here."""
        task, cfg = stage.task, stage.config
        if stage.job and self.plan.on_ray:
            if task in RAY_TASKS:  # this process drives the policy / frozen groups
                runner_of(task)(cfg)
            else:
                group = self.plan.ray_group
                run_recipe_on_ray(runner_of(task), cfg, group.size, group.settings, name=stage.name)
        elif stage.job and self.plan.launcher:
            cmd = launch_command(self.plan.launcher, task, cfg)
            self.log(f"[distill] {stage.name}: {' '.join(shlex.quote(x) for x in cmd)}")
            _run_command(cmd)
        elif task in _LOGGING_TASKS:
            runner_of(task)(cfg, log=self.log)
        else:
            runner_of(task)(cfg)

    def _gguf_convert(self, stage: Stage) -> None:
        convert_gguf(resolve_gguf(stage.config), stage.outputs[0], overwrite=True)

    def _prepare_prompts(self, stage: Stage) -> None:
        p = stage.config
        prepare_prompts(
            None if p.source == "sharegpt" else p.source,
            self.path("prompts"),
            eval_size=p.eval_size,
            seed=p.seed,
            min_chars=p.min_chars,
            max_chars=p.max_chars,
            max_prompts=p.train_size + p.eval_size + p.val_size,
            val_size=p.val_size,
            log=self.log,
        )

    def _build_sets(self, stage: Stage) -> None:
        teacher, student = stage.inputs
        build_sets(teacher, student, self.path("sets"), log=self.log, keep_unfinished=stage.config.keep_unfinished)

    def _eval_prompts(self, stage: Stage) -> None:
        write_prompts(stage.config.benchmark, stage.outputs[0], stage.config.max_items)

    def _select(self, stage: Stage) -> None:
        """Evaluate every grid point on the validation prompts, link the best (by ``metric``) as
        run_dir/dadpo and write report/validation/ (the report, sweep.{json,md,png}, selection.json)."""
        step: SelectStep = stage.config
        runs = step.points
        folder = self.path("report", "validation")
        report = evaluate_responses(
            step.teacher,
            self.path("gen", "teacher_val.jsonl"),
            {run.label: self.path("gen", f"{run.name}_val.jsonl") for run in runs},
            folder,
            apply_chat_template=step.apply_chat_template,
            prompts=self.path("prompts", "val.jsonl"),
            compare_to=None,
            dtype=step.dtype,
            served=step.served,
        )
        metric = step.metric
        sign = 1 if SELECT_METRICS[metric] else -1
        best = max(runs, key=lambda run: sign * report["models"][run.label][metric])
        write_sweep_report(report, {run.label: run.sweep for run in runs}, folder)
        choice = {
            "metric": metric,
            "higher_is_better": SELECT_METRICS[metric],
            "chosen": best.name,
            "label": best.label,
            "point": best.sweep,
            "validation_prompts": report["num_rows"],
            "values": {run.name: report["models"][run.label][metric] for run in runs},
        }
        with open(os.path.join(folder, "selection.json"), "w") as f:
            json.dump(choice, f, indent=2)
        link = self.path("dadpo")
        if os.path.islink(link):
            os.remove(link)
        os.symlink(best.name, link)  # relative: the run folder can move
        self.log(
            f"[distill] select: {best.label} has the best validation {metric} "
            f"({report['models'][best.label][metric]:.4f} on {report['num_rows']} prompts): it is daDPO"
        )

    def _report(self, stage: Stage) -> None:
        step: ReportStep = stage.config
        report = evaluate_responses(
            step.teacher,
            self.path("gen", "teacher_eval.jsonl"),
            dict(step.models),
            self.path("report"),
            apply_chat_template=step.apply_chat_template,
            prompts=self.path("prompts", "eval.jsonl"),
            dtype=step.dtype,
            served=step.served,
        )
        judged = os.path.join(self.path("report", "judge"), "report.md")
        if os.path.exists(judged):  # the LLM-judge table (judge:), the paper's Table 1 layout
            with (
                open(self.path("report", "report.md"), "a", encoding="utf-8") as f,
                open(judged, encoding="utf-8") as g,
            ):
                f.write("\n## LLM judge\n\n" + g.read())
        if step.selected:  # the grid was compared on the validation prompts only
            with open(self.path("report", "validation", "selection.json")) as f:
                choice = json.load(f)
            with open(self.path("report", "report.md"), "a", encoding="utf-8") as f:
                f.write(
                    f"\ndaDPO is {choice['label']}: the best validation {choice['metric']} of the grid on "
                    f"{choice['validation_prompts']} validation prompts (report/validation/).\n"
                )
        elif step.points:
            write_sweep_report(report, dict(step.points), self.path("report"))
            self.log(f"[distill] beta ablation: {self.path('report', 'sweep.png')}")
        with open(self.path("report", "timings.json"), "w") as f:
            json.dump(self.timings, f, indent=2)
        self.log(f"[distill] report: {self.path('report', 'report.md')}")
