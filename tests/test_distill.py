"""The one-command pipeline (Algorithm 1) on tiny models: every stage runs, a rerun skips them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from openrlhf.config import ConfigError, load_config
from openrlhf.config.parse import config_from_flags, config_to_flags
from openrlhf.config.schema import KL_BASELINE_COEF, REGISTRY, SFTConfig
from openrlhf.pipeline.config import load_distill_config
from openrlhf.pipeline.distill import launch_command, run_distill
from openrlhf.pipeline.plan import STEPS, plan_distill

from tiny import REPO, read_metrics


def _sharegpt(path: str, n: int = 14) -> str:
    from tiny import TOPICS as topics

    records = [
        {
            "id": f"c{i}",
            "conversations": [
                {"from": "human", "value": f"Tell me about {topics[i % len(topics)]}."},
                {"from": "gpt", "value": "Sure."},
            ],
        }
        for i in range(n)
    ]
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def _config(tmp_path, teacher: str, student: str, **extra) -> str:
    """A distill config; ``ddpo=None`` leaves out the default dDPO baseline, ``baselines=`` adds others."""
    ddpo = extra.pop("ddpo", {"train.batch_size": 4, "adam.lr": 1e-3, "model.beta": 0.1})
    baselines = extra.pop("baselines", None)
    if isinstance(baselines, list):
        baselines = {name: {} for name in baselines}
    if ddpo is not None:
        baselines = {**(baselines or {}), "ddpo": ddpo}
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "teacher": teacher,
        "student": {"model_name_or_path": student},
        "prompts": {
            "source": _sharegpt(str(tmp_path / "sharegpt.json")),
            "train_size": 8,
            "eval_size": 4,
            "seed": 0,
            "min_chars": 5,
            "max_chars": 200,
        },
        "common": {
            "data.apply_chat_template": True,
            "data.max_len": 256,
            "ds.param_dtype": "fp32",
            "ds.zero_stage": 0,
            "train.micro_batch_size": 2,
            "lr_warmup_ratio": 0,
        },
        "generate": {"generate.max_new_tokens": 12, "generate.batch_size": 4},
        "sft": {"train.batch_size": 4, "train.max_epochs": 1, "adam.lr": 1e-3},
        "dadpo": {
            "train.batch_size": 4,
            "train.max_epochs": 1,
            "adam.lr": 1e-3,
            "model.beta": 0.1,
            "teacher.beta": 0.1,
        },
        **({"baselines": baselines} if baselines is not None else {}),
        "cache_logps": True,
        **extra,
    }
    path = str(tmp_path / "distill.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def test_distill_runs_every_stage_then_skips_them(tiny_dir, tiny_talking_teacher, tmp_path):
    cfg = load_distill_config(_config(tmp_path, tiny_talking_teacher, tiny_dir))
    lines = []
    timings = run_distill(cfg, log=lines.append)
    expected = [
        "prompts",
        "gen_teacher_train",
        "gen_student_train",
        "sets",
        "dsft",
        "score",
        "dadpo",
        "ddpo",
        "gen_teacher_eval",
        "gen_base_eval",
        "gen_dsft_eval",
        "gen_dadpo_eval",
        "gen_ddpo_eval",
        "report",
    ]
    assert list(timings) == expected
    run = cfg.run_dir
    report = json.load(open(os.path.join(run, "report", "report.json")))
    assert os.path.exists(os.path.join(run, "report", "report.md"))
    assert os.path.exists(os.path.join(run, "report", "report.png"))
    text = json.dumps(report)
    for label in ("base", "dSFT", "daDPO", "dDPO"):
        assert label in text
    for folder in ("dsft", "dadpo", "ddpo"):
        assert os.path.exists(os.path.join(run, folder, "model.safetensors"))
        assert os.path.exists(os.path.join(run, folder, "metrics.jsonl"))
    pref = [json.loads(x) for x in open(os.path.join(run, "sets", "preference.jsonl"))]
    assert pref and set(pref[0]) >= {"prompt", "chosen", "rejected"}
    assert "teacher_chosen_logp" in json.loads(open(os.path.join(run, "scored", "train.jsonl")).readline())
    _check_dadpo_from_dsft(run)

    again = []
    assert run_distill(cfg, log=again.append) == {}
    assert sum("skipped" in line for line in again) == len(expected)


def test_distill_bad_stage_flag_fails_before_any_work(tiny_dir, tiny_talking_teacher, tmp_path):
    path = _config(tmp_path, tiny_talking_teacher, tiny_dir, sft={"train.batch_sise": 4})
    with pytest.raises(ConfigError, match="--train.batch_sise"):
        run_distill(load_distill_config(path))
    assert not os.path.exists(str(tmp_path / "run"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: x\nstudnt: {}\n")
    with pytest.raises(ConfigError, match="studnt: unknown key"):
        load_distill_config(str(bad))


@pytest.mark.main_leg
@pytest.mark.slow
def test_distill_with_a_deepspeed_launcher_two_processes(tiny_dir, tiny_talking_teacher, tmp_path, monkeypatch):
    """Training and scoring stages started as 2-process ZeRO-3 DeepSpeed jobs by the pipeline."""
    from tiny import DEEPSPEED, free_port

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    path = _config(
        tmp_path,
        tiny_talking_teacher,
        tiny_dir,
        ddpo=None,
        launcher=" ".join(DEEPSPEED) + f" --num_gpus 2 --master_addr 127.0.0.1 --master_port {free_port()}",
    )
    cfg = load_distill_config(path)
    cfg.common["ds.zero_stage"] = 3
    timings = run_distill(cfg)
    assert {"dsft", "score", "dadpo", "report"} <= set(timings)
    run = cfg.run_dir
    for folder in ("dsft", "dadpo"):
        assert os.path.exists(os.path.join(run, folder, "model.safetensors"))
    _check_dadpo_from_dsft(run)


def _check_dadpo_from_dsft(run: str) -> None:
    """Algorithm 1, steps 5-6: the policy starts from pi_sft and the reference IS pi_sft, so the
    first step's reference rewards are exactly 0; training then moves the weights away from it."""
    from safetensors.torch import load_file

    metrics = read_metrics(os.path.join(run, "dadpo"))
    pairs = sum(1 for _ in open(os.path.join(run, "sets", "preference.jsonl")))
    batch = yaml.safe_load(open(os.path.join(run, "dadpo", "run_config.yaml")))["train"]["batch_size"]
    assert [m["step"] for m in metrics] == list(range(1, pairs // batch + 1))
    assert metrics[0]["chosen_reward"] == pytest.approx(0.0, abs=1e-4)
    assert metrics[0]["reject_reward"] == pytest.approx(0.0, abs=1e-4)
    assert metrics[0]["teacher_chosen_reward"] != 0.0
    dsft = load_file(os.path.join(run, "dsft", "model.safetensors"))
    dadpo = load_file(os.path.join(run, "dadpo", "model.safetensors"))
    assert dsft.keys() == dadpo.keys() and any(not (dsft[k] == dadpo[k]).all() for k in dsft)


@pytest.mark.main_leg
@pytest.mark.slow
def test_distill_launched_under_deepspeed_two_processes(tiny_dir, tiny_talking_teacher, tmp_path):
    """`deepspeed --num_gpus 2 --module openrlhf.cli.distill`: training stages on both processes
    (ZeRO-3), the others on rank 0; every stage completes and the report is written."""
    from tiny import run_deepspeed

    cfg = yaml.safe_load(open(_config(tmp_path, tiny_talking_teacher, tiny_dir, ddpo=None)))
    cfg["common"].update({"ds.zero_stage": 3, "train.micro_batch_size": 1})
    path = str(tmp_path / "z3.yaml")
    yaml.safe_dump(cfg, open(path, "w"))
    res = run_deepspeed("openrlhf.cli.distill", ["--config", path], timeout=900)
    run = cfg["run_dir"]
    assert os.path.exists(os.path.join(run, "report", "report.json"))
    assert res.stdout.count("[distill] dadpo: running") == 1  # rank 0 alone reports
    for folder in ("dsft", "dadpo"):
        assert os.path.exists(os.path.join(run, folder, "model.safetensors"))


@pytest.mark.slow
def test_sweep_and_baselines_score_once_train_each_and_plot(tiny_dir, tiny_talking_teacher, tmp_path, monkeypatch):
    """A 2 x 2 daDPO grid and every baseline, from one dSFT model and one scoring pass."""
    import openrlhf.recipes.score as score  # the module runner_of("score_logps") reads

    calls = []
    real = score.score_logps
    monkeypatch.setattr(score, "score_logps", lambda cfg: calls.append(cfg) or real(cfg))
    # The talking teacher shares the student's tokenizer, so the KL baselines apply.
    path = _config(
        tmp_path,
        tiny_talking_teacher,
        tiny_dir,
        ddpo=None,
        baselines={"dsft_kl": {"kd.coef": 0.1}, "ddpo": {}, "ddpo_kl": {}, "rdpo": {}, "dkto": {}},
        sweep={"dadpo": {"model.beta": [0.1, 0.5], "teacher.beta": [0.01, 0.1]}},
    )
    cfg = load_distill_config(path)
    timings = run_distill(cfg, log=lambda *a: None)
    points = ["dadpo_b0.1_t0.01", "dadpo_b0.1_t0.1", "dadpo_b0.5_t0.01", "dadpo_b0.5_t0.1"]
    for name in ["dsft_kl", "ddpo", "ddpo_kl", "rdpo", "dkto"] + points:
        assert name in timings and os.path.exists(os.path.join(cfg.run_dir, name, "model.safetensors")), name
    assert len(calls) == 1  # the teacher and the reference were scored once for all 10 runs
    run = cfg.run_dir
    report = json.load(open(os.path.join(run, "report", "report.json")))
    labels = set(report["models"])
    assert {"dSFT+KL", "dDPO", "dDPO+KL", "rDPO", "dKTO", "daDPO beta1:0.1 beta2:0.01"} <= labels
    sweep = json.load(open(os.path.join(run, "report", "sweep.json")))
    assert sweep["flags"] == ["model.beta", "teacher.beta"] and len(sweep["points"]) == 4
    assert os.path.getsize(os.path.join(run, "report", "sweep.png")) > 10_000
    # the baselines ran what they are: rDPO has no reference term, dDPO+KL logs its KL, dKTO its reference point
    assert read_metrics(os.path.join(run, "rdpo"))[0]["chosen_reward"] == 0.0
    assert "kd_loss" in read_metrics(os.path.join(run, "ddpo_kl"))[0]
    assert "kl" in read_metrics(os.path.join(run, "dkto"))[0]
    assert "kd_loss" in read_metrics(os.path.join(run, "dsft_kl"))[0]
    again = []
    assert run_distill(cfg, log=again.append) == {}  # finished runs are skipped


@pytest.mark.main_leg
def test_distill_with_a_judge_section_writes_the_judged_table(tiny_dir, tiny_talking_teacher, tmp_path):
    """judge: the benchmarks' answers of every model and the three judged evaluations, through a real
    (local) OpenAI-compatible endpoint, and IFEval scored by its checker; the table lands in the run's report."""
    from judge_server import FakeJudge

    def grade(messages):
        text = messages[-1]["content"]
        if "model_identifier" in text:  # AlpacaEval 2's annotator: m and M equally likely -> preference 1.5
            return {"content": "m", "top_logprobs": [[("m", -0.7), ("M", -0.7)]]}
        if "Say OK" in text:  # the endpoint check (AlpacaEval's asks for log-probabilities too)
            return {"content": "OK", "top_logprobs": [[("OK", -0.1)]]}
        return "Rating: [[6]]" if "[[rating]]" in messages[0]["content"] + text else "[[C]]"

    with FakeJudge(grade) as server:
        path = _config(
            tmp_path,
            tiny_talking_teacher,
            tiny_dir,
            ddpo=None,
            judge={
                "base_url": server.url,
                "model": "fake-judge",
                "max_items": 2,
                "concurrency": 2,
                "tasks": ["indomain", "mtbench", "alpacaeval", "ifeval"],
            },
        )
        cfg = load_distill_config(path)
        timings = run_distill(cfg, log=lambda *a: None)
    for stage in (
        "prompts_mtbench",
        "gen_teacher_mtbench",
        "gen_dadpo_alpacaeval",
        "judge_indomain",
        "judge_mtbench",
        "judge_alpacaeval",
        "prompts_ifeval",
        "gen_dsft_ifeval",
        "judge_ifeval",
        "report",
    ):
        assert stage in timings, stage
    judged = json.load(open(os.path.join(cfg.run_dir, "report", "judge", "report.json")))
    assert judged["models"]["daDPO"]["mtbench"]["score"] == 6.0
    assert judged["models"]["daDPO"]["indomain"]["tie"] == 2  # max_items 2; every pair judged [[C]]: ties
    assert judged["models"]["teacher"]["alpacaeval"]["win_rate"] == 50.0
    assert "teacher" not in judged["models"] or "indomain" not in judged["models"]["teacher"]
    ifeval = judged["models"]["daDPO"]["ifeval"]
    assert ifeval["prompts"] == 2 and 0 <= ifeval["prompt_level_strict_acc"] <= ifeval["prompt_level_loose_acc"] <= 1
    assert set(judged["paired"]["ifeval"]) >= {"teacher vs daDPO", "dSFT vs daDPO"}
    md = open(os.path.join(cfg.run_dir, "report", "report.md")).read()
    assert "## LLM judge" in md and "### IFEval" in md


@pytest.mark.slow
def test_sweep_point_chosen_on_validation_prompts_is_daDPO(tiny_dir, tiny_talking_teacher, tmp_path):
    """select_by: the grid is compared on the validation prompts only; the best point becomes run_dir/dadpo
    and is the one daDPO row of the held-out report (compared prompt by prompt with the others)."""
    path = _config(
        tmp_path,
        tiny_talking_teacher,
        tiny_dir,
        ddpo=None,
        select_by="teacher_nll",
        sweep={"dadpo": {"model.beta": [0.1, 0.5]}},
    )
    with pytest.raises(ConfigError, match="select_by: needs validation prompts"):
        load_distill_config(path)  # never chosen on the held-out prompts
    data = yaml.safe_load(open(path))
    data["prompts"]["val_size"] = 4
    yaml.safe_dump(data, open(path, "w"))
    cfg = load_distill_config(path)
    timings = run_distill(cfg, log=lambda *_: None)
    assert "dadpo" not in timings and {"dadpo_b0.1", "dadpo_b0.5", "gen_teacher_val", "select"} <= set(timings)
    assert "gen_dadpo_b0.1_eval" not in timings  # the grid never sees the held-out prompts
    run = cfg.run_dir
    val = {json.loads(x)["id"] for x in open(os.path.join(run, "prompts", "val.jsonl"))}
    held = {json.loads(x)["id"] for x in open(os.path.join(run, "prompts", "eval.jsonl"))}
    train = {json.loads(x)["id"] for x in open(os.path.join(run, "prompts", "train.jsonl"))}
    assert len(val) == 4 and not (val & held) and not (val & train)
    choice = json.load(open(os.path.join(run, "report", "validation", "selection.json")))
    values = choice["values"]
    assert choice["chosen"] == min(values, key=values.get)
    assert os.readlink(os.path.join(run, "dadpo")) == choice["chosen"]
    report = json.load(open(os.path.join(run, "report", "report.json")))
    assert list(report["models"]) == ["teacher", "base", "dSFT", "daDPO"] and report["compare_to"] == "daDPO"
    assert "daDPO is daDPO" in open(os.path.join(run, "report", "report.md")).read()
    for name in ("sweep.json", "sweep.png", "report.md"):
        assert os.path.exists(os.path.join(run, "report", "validation", name))


def test_report_stages_score_in_the_runs_dtype(tmp_path):
    """select_by and the report score with the teacher in the run's ds.param_dtype (bf16 on a GPU unless
    common: says otherwise), not in fp32 (evaluate_responses itself runs fp32 on a CPU)."""

    def dtype(common):
        sweep = {"dadpo": {"model.beta": [0.1, 0.5]}}
        plan = _plan_example(
            tmp_path,
            "demo_cpu.yaml",
            common=common,
            select_by="teacher_nll",
            sweep=sweep,
            prompts={"source": "sharegpt", "train_size": 8, "eval_size": 4, "val_size": 4},
        )
        assert plan.stage("select").config.dtype == plan.stage("report").config.dtype
        return plan.stage("report").config.dtype

    assert dtype({}) == "bf16" and dtype({"ds.param_dtype": "fp32"}) == "fp32"
    assert dtype({"ds.param_dtype": "fp16"}) == "fp16"


def test_kl_baselines_get_the_kd_coef_default_of_train_kd(tiny_dir, tmp_path):
    """One --kd.coef default for the KL baselines: the pipeline's dsft_kl and ddpo_kl get train_kd's (0.4, as
    docs/pipeline.md says) when their sections give none, and a section's own value wins. Planned only, nothing runs."""
    kd_default = load_config(
        ["--model.model_name_or_path", "m", "--teacher.model_name_or_path", "t", "--data.dataset", "d"],
        "kd",
        check_paths=False,
        check_packages=False,
    ).kd.coef
    assert kd_default == 0.4
    for given, want in [({}, kd_default), ({"kd.coef": 0.1}, 0.1)]:
        path = _config(tmp_path, tiny_dir, tiny_dir, baselines={"dsft_kl": dict(given), "ddpo_kl": dict(given)})
        plan = plan_distill(load_distill_config(path), check_packages=False)
        for name in ("dsft_kl", "ddpo_kl"):
            assert plan.stage(name).config.kd.coef == want, (name, given)


# ---- the planner: the stages of a config, planned without running anything ------------------------------------


def _plan_example(tmp_path, name: str, **changes):
    """The plan of examples/configs/<name> (run_dir in tmp_path), with top-level keys replaced."""
    data = yaml.safe_load(open(os.path.join(REPO, "examples", "configs", name)))
    data.update(run_dir=str(tmp_path / "run"), **changes)
    path = str(tmp_path / name)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)  # the order of baselines: is the order of the runs
    return plan_distill(load_distill_config(path), check_packages=False)


def test_plan_of_the_cpu_demo(tmp_path):
    plan = _plan_example(tmp_path, "demo_cpu.yaml")
    run = lambda *p: os.path.join(str(tmp_path / "run"), *p)  # noqa: E731
    assert plan.names == [
        "teacher",
        "prompts",
        "student",
        "gen_teacher_train",
        "gen_student_train",
        "sets",
        "dsft",
        "score",
        "dadpo",
        "gen_teacher_eval",
        "gen_base_eval",
        "gen_dsft_eval",
        "gen_dadpo_eval",
        "report",
    ]
    assert [s.task for s in plan.stages] == [
        "gguf_convert",
        "prepare_prompts",
        "prune",
        "generate",
        "generate",
        "build_sets",
        "sft",
        "score_logps",
        "dadpo",
        "generate",
        "generate",
        "generate",
        "generate",
        "report",
    ]
    assert all(s.task in REGISTRY or s.task in STEPS for s in plan.stages)
    assert plan.stage("teacher").config == "smollm2" and plan.stage("teacher").outputs == (run("teacher"),)
    prune = plan.stage("student").config
    assert (prune.model.model_name_or_path, prune.prune.output_dir) == (run("teacher"), run("student"))
    assert (prune.prune.mlp_ratio, prune.prune.method, prune.prune.calibration_samples) == (0.2, "activation", 32)
    gen = plan.stage("gen_student_train").config
    assert (gen.model.model_name_or_path, gen.data.dataset, gen.generate.output_path) == (
        run("student"),
        run("prompts", "train.jsonl"),
        run("gen", "student_train.jsonl"),
    )
    assert (gen.generate.backend, gen.generate.max_new_tokens, gen.vllm.gpu_memory_utilization) == ("auto", 256, 0.15)
    assert gen.data.apply_chat_template and gen.data.max_len == 384 and not gen.generate.ray  # common: applies
    dsft = plan.stage("dsft").config
    assert type(dsft) is SFTConfig
    assert (dsft.model.model_name_or_path, dsft.data.dataset, dsft.ckpt.output_dir) == (
        run("student"),
        run("sets", "sft.jsonl"),
        run("dsft"),
    )
    assert (dsft.data.input_key, dsft.data.output_key) == ("input", "output")
    assert (dsft.train.batch_size, dsft.train.micro_batch_size, dsft.train.max_epochs, dsft.adam.lr) == (8, 4, 2, 2e-5)
    assert (dsft.ds.zero_stage, dsft.ds.param_dtype, dsft.lr_warmup_ratio) == (0, "fp32", 0.05)
    score = plan.stage("score").config
    assert (score.model.model_name_or_path, score.ref.model_name_or_path, score.teacher.model_name_or_path) == (
        run("dsft"),
        run("dsft"),
        (run("teacher"),),
    )
    assert (score.data.dataset, score.ckpt.output_dir) == (run("sets", "preference.jsonl"), run("scored"))
    dadpo = plan.stage("dadpo").config
    assert (dadpo.model.beta, dadpo.teacher.beta, dadpo.adam.lr, dadpo.train.batch_size) == (0.1, (0.01,), 5e-6, 8)
    assert (dadpo.model.model_name_or_path, dadpo.ref.model_name_or_path, dadpo.data.dataset) == (
        run("dsft"),
        run("dsft"),
        run("scored"),
    )  # from pi_sft, on the cached log-probs
    # No launcher: the training / scoring stages run on every process of this one, the others on rank 0.
    assert (
        [s.name for s in plan.stages if s.everywhere]
        == [s.name for s in plan.stages if s.job]
        == ["dsft", "score", "dadpo"]
    )
    report = plan.stage("report").config
    assert report.models == {
        "base": run("gen", "base_eval.jsonl"),
        "dSFT": run("gen", "dsft_eval.jsonl"),
        "daDPO": run("gen", "dadpo_eval.jsonl"),
    }
    assert plan.runs[0].name == "dadpo" and plan.unused == {} and plan.ray_group is None
    assert not os.path.exists(run())  # planning writes nothing


def test_a_judge_section_needs_a_vllm_context_that_holds_the_benchmark_answers(tmp_path):
    """The demo sizes vllm.max_model_len (1024) for its training prompts; MT-Bench's two answers of up to
    FastChat's 1024 new tokens do not fit in it. Refused when planning, not when the stage starts after the
    training (vLLM refused turn 2's prompt with a traceback)."""
    demo = yaml.safe_load(open(os.path.join(REPO, "examples", "configs", "demo_cpu.yaml")))
    gen = {**demo["generate"], "generate.backend": "vllm"}
    judge = {"base_url": "http://127.0.0.1:9/v1", "model": "j", "tasks": ["indomain", "mtbench"]}

    def problems(generate, tasks=("indomain", "mtbench")):
        try:
            _plan_example(tmp_path, "demo_cpu.yaml", generate=generate, judge={**judge, "tasks": list(tasks)})
        except ConfigError as e:
            return [p for p in e.problems if "max_model_len" in p]
        return []

    assert problems(gen) == [
        "gen_*_mtbench stages: generate: vllm.max_model_len 1024 is too small for mtbench's answers "
        "(2 x up to 1024 new tokens, FastChat's setting, and up to 1024 prompt tokens): set it to 3072 or more, "
        "or 0 for the model's own context"
    ]
    assert problems({**gen, "vllm.max_model_len": 3072}) == problems({**gen, "vllm.max_model_len": 0}) == []
    # AlpacaEval: one answer of up to the leaderboard's common 2048 new tokens; without the rows' settings the
    # section's own 256 new tokens per answer.
    assert (
        "(1 x up to 2048 new tokens, the leaderboard's common setting, and up to 1024 prompt tokens): set it to 3072"
        in (problems(gen, tasks=("alpacaeval",))[0])
    )
    assert "set it to 1536 or more" in problems({**gen, "generate.row_settings": False})[0]  # 2 x 256 + 1024
    assert problems({**gen, "generate.backend": "hf"}) == []  # the hf backend has no such limit


def test_a_judge_section_with_ifeval_alone_needs_no_endpoint(tmp_path):
    """judge: {tasks: [ifeval]}: IFEval's prompts, every model's answers and its scoring, without --judge.*;
    judge settings there would go unused (refused); with a judged task the endpoint is required again."""
    # generate.backend auto is vllm where vllm is installed: the hf backend here, vLLM's context checked below
    demo_gen = yaml.safe_load(open(os.path.join(REPO, "examples", "configs", "demo_cpu.yaml")))["generate"]
    hf = {**demo_gen, "generate.backend": "hf"}
    plan = _plan_example(tmp_path, "demo_cpu.yaml", generate=hf, judge={"tasks": ["ifeval"], "max_items": 3})
    run = lambda *p: os.path.join(str(tmp_path / "run"), *p)  # noqa: E731
    names = plan.names
    assert names[names.index("gen_dadpo_eval") + 1 :] == [
        "prompts_ifeval",
        "gen_teacher_ifeval",
        "gen_base_ifeval",
        "gen_dsft_ifeval",
        "gen_dadpo_ifeval",
        "judge_ifeval",
        "report",
    ]
    stage = plan.stage("judge_ifeval")
    assert stage.config.task == "ifeval" and stage.config.max_items == 3 and stage.config.judge.base_url == ""
    assert stage.config.candidate == tuple(
        f"{label}={run('gen', name + '_ifeval.jsonl')}"
        for label, name in (("teacher", "teacher"), ("base", "base"), ("dSFT", "dsft"), ("daDPO", "dadpo"))
    )
    assert plan.stage("prompts_ifeval").outputs == (run("prompts", "ifeval.jsonl"),)

    def problems(judge):
        try:
            _plan_example(tmp_path, "demo_cpu.yaml", generate=hf, judge=judge)
        except ConfigError as e:
            return [p.split(": ", 1)[1] for p in e.problems]
        return []

    assert problems({"tasks": ["ifeval"], "base_url": "http://127.0.0.1:9/v1"}) == [
        "judge.base_url: judge.tasks ['ifeval'] are scored by a program, without a judge: leave it out"
    ]
    assert problems({"tasks": ["ifeval", "mtbench"]}) == [
        "judge.base_url: required: the OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1",
        "judge.model: required: the judge model's name at the endpoint",
    ]
    # vLLM's context must hold IFEval's answers: 1280 new tokens (its prompt file's) + 1024 for the prompt
    gen = {**demo_gen, "generate.backend": "vllm"}
    try:
        _plan_example(tmp_path, "demo_cpu.yaml", generate=gen, judge={"tasks": ["ifeval"]})
        raise AssertionError("planned")
    except ConfigError as e:
        assert e.problems == [
            "gen_*_ifeval stages: generate: vllm.max_model_len 1024 is too small for ifeval's answers (1 x up to "
            "1280 new tokens, its harnesses' setting, and up to 1024 prompt tokens): set it to 2304 or more, or 0 "
            "for the model's own context"
        ]


def test_planning_imports_no_torch_and_loads_no_model():
    code = (
        "import sys; from openrlhf.pipeline.config import load_distill_config; "
        "from openrlhf.pipeline.plan import plan_distill; "
        "cfg = load_distill_config('examples/configs/demo_cpu.yaml'); cfg.run_dir = sys.argv[1]; "
        "plan = plan_distill(cfg, check_packages=False); "
        "print(len(plan.stages), 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "/nonexistent/run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
        check=True,
    ).stdout.split()
    assert out == ["14", "False", "False"]


def test_plan_of_the_baselines_and_sweep_with_a_launcher(tmp_path):
    plan = _plan_example(tmp_path, "distill_qwen2.5_7b_to_1.5b_baselines_gpu.yaml")
    run = lambda *p: os.path.join(str(tmp_path / "run"), *p)  # noqa: E731
    points = [f"dadpo_b{b}_t{t}" for b in (0.01, 0.1, 1.0) for t in (0.001, 0.01, 0.1, 1.0)]
    runs = ["dadpo", "dsft_kl", "ddpo", "ddpo_kl", "rdpo", "dkto"] + points
    assert plan.names[:7] == ["prompts", "gen_teacher_train", "gen_student_train", "sets", "dsft", "score", "dadpo"]
    assert plan.names[6 : 6 + len(runs)] == runs and [r.name for r in plan.runs] == runs
    assert plan.names[-1] == "report" and "student" not in plan.names  # the student is given: nothing pruned
    assert [plan.stage(n).task for n in runs[:6]] == ["dadpo", "kd", "dpo", "dpo", "dadpo", "kto"]
    kl = plan.stage("dsft_kl").config
    assert kl.kd.coef == 0.2 and kl.model.model_name_or_path == "Qwen/Qwen2.5-1.5B-Instruct"  # from the base student
    assert (kl.data.dataset, kl.teacher.model_name_or_path) == (run("sets", "sft.jsonl"), ("Qwen/Qwen2.5-7B-Instruct",))
    assert (kl.train.batch_size, kl.train.max_epochs, kl.adam.lr) == (32, 3, 5e-6)  # the sft: section's settings
    assert plan.stage("ddpo_kl").config.kd.coef == 0.2 and plan.stage("ddpo").config.kd.coef == 0.0
    assert plan.stage("rdpo").config.model.beta == 0.0 and plan.stage("dkto").config.train.micro_batch_size == 2
    for name in points:
        cfg = plan.stage(name).config
        assert f"dadpo_b{cfg.model.beta}_t{cfg.teacher.beta[0]}" == name and cfg.ckpt.output_dir == run(name)
        assert cfg.data.dataset == run("scored") and cfg.adam.lr == 5e-7
    labels = plan.stage("report").config.models
    assert list(labels)[:8] == ["base", "dSFT", "daDPO", "dSFT+KL", "dDPO", "dDPO+KL", "rDPO", "dKTO"]
    assert "daDPO beta1:0.1 beta2:0.01" in labels and len(plan.stage("report").config.points) == 12
    # A launcher: the training / scoring stages are its jobs, each started from its config's flags.
    assert all(s.job and not s.everywhere for s in plan.stages if s.name in runs + ["dsft", "score"])
    for name in ["dsft", "score"] + runs[:6]:
        stage = plan.stage(name)
        cmd = launch_command(plan.launcher, stage.task, stage.config)
        assert cmd[:5] == ["deepspeed", "--num_gpus", "8", "--module", f"openrlhf.cli.{REGISTRY[stage.task].command}"]
        assert load_config(cmd[5:], stage.task, check_paths=False, check_packages=False) == stage.config, name

    # Baselines given as a list take no flags of their own: both KL baselines get train_kd's default.
    names = ["dsft_kl", "ddpo", "ddpo_kl", "rdpo"]  # (dkto would take daDPO's micro-batch of 1: refused)
    plan = _plan_example(tmp_path, "distill_qwen2.5_7b_to_1.5b_baselines_gpu.yaml", baselines=names, sweep=None)
    assert [r.name for r in plan.runs] == ["dadpo"] + names
    assert plan.stage("dsft_kl").config.kd.coef == plan.stage("ddpo_kl").config.kd.coef == KL_BASELINE_COEF


def test_plan_of_a_selected_sweep_on_ray(tmp_path):
    plan = _plan_example(
        tmp_path,
        "distill_qwen2.5_7b_to_1.5b_ray.yaml",
        select_by="teacher_nll",
        sweep={"dadpo": {"model.beta": [0.1, 0.5]}},
        prompts={"source": "sharegpt", "train_size": 8, "eval_size": 4, "val_size": 4},
    )
    assert "dadpo" not in [r.name for r in plan.runs]  # daDPO is the chosen grid point
    i = plan.names.index("select")
    assert plan.names[i - 3 : i + 1] == ["gen_teacher_val", "gen_dadpo_b0.1_val", "gen_dadpo_b0.5_val", "select"]
    assert "gen_dadpo_b0.1_eval" not in plan.names and "gen_dadpo_eval" in plan.names
    assert [p.name for p in plan.stage("select").config.points] == ["dadpo_b0.1", "dadpo_b0.5"]
    assert plan.stage("dadpo_b0.1").task == "dadpo_ray" and plan.stage("dsft").task == "sft"  # sft has no Ray trainer
    assert plan.stage("gen_teacher_val").config.generate.ray and plan.ray_group.size >= 1
    assert plan.stage("report").config.selected and plan.stage("report").config.points == {}


def test_config_from_flags_reads_yaml_values_and_names_each_bad_flag():
    cfg = config_from_flags(
        "dadpo",
        {
            "model.model_name_or_path": "m",
            "data.dataset": "d",
            "adam.lr": "2e-5",
            "adam.betas": [0.9, 0.99],
            "teacher.model_name_or_path": "a,b",
            "teacher.beta": [0.1, 0.2],
            "ref.offload": True,
        },
        check_paths=False,
    )
    assert (cfg.adam.lr, cfg.adam.betas, cfg.teacher.model_name_or_path) == (2e-5, (0.9, 0.99), ("a", "b"))
    assert (cfg.teacher.beta, cfg.ref.offload) == ((0.1, 0.2), True)
    flags = config_to_flags(cfg)
    # only what differs from train_dadpo's defaults (adam.lr 1e-5, train.batch_size 128, ...)
    assert "--adam.lr=2e-05" in flags and "--ref.offload=true" in flags and not any("batch_size" in f for f in flags)
    assert load_config(flags, "dadpo", check_paths=False) == cfg
    with pytest.raises(ConfigError) as e:
        config_from_flags(
            "dpo",
            {
                "model.model_name_or_path": "m",
                "data.dataset": "d",
                "train.batch_sise": 8,
                "adam.betas": 0.9,
                "model.beta": "x",
            },
            check_paths=False,
        )
    assert e.value.problems == [
        "--train.batch_sise: unknown flag (did you mean --train.batch_size or --train.micro_batch_size?)",
        "--adam.betas: expected a list of 2 values (float float), got 0.9",
        "--model.beta: expected a float, got 'x'",
    ]


def test_a_value_no_flag_can_carry_is_refused_when_planning_for_a_launcher(tmp_path):
    """Under launcher: a stage runs as its own command built from its config: a value that no flag can give
    (an empty list over a non-empty default) is a planning error naming the stage, before anything runs."""
    sft = yaml.safe_load(open(os.path.join(REPO, "examples", "configs", "distill_qwen2.5_7b_to_1.5b_gpu.yaml")))["sft"]
    with pytest.raises(ConfigError) as e:
        _plan_example(tmp_path, "distill_qwen2.5_7b_to_1.5b_gpu.yaml", sft={**sft, "ds.lora.target_modules": []})
    assert e.value.problems == [
        "dsft stage: --ds.lora.target_modules: () cannot be given as a flag (launcher: starts "
        "this stage as its own command)"
    ]
    plan = _plan_example(
        tmp_path, "distill_qwen2.5_7b_to_1.5b_gpu.yaml", sft={**sft, "ds.lora.target_modules": []}, launcher=""
    )  # in this process the config is handed over as it is
    assert plan.stage("dsft").config.ds.lora.target_modules == ()


def test_a_second_distill_into_a_run_dir_in_use_is_refused(tiny_dir, tiny_talking_teacher, tmp_path):
    """run_dir resumes by design, so only the lock applies: a live distill's lock refuses a second one
    (naming its PID and host) before any stage runs."""
    import socket

    from openrlhf.utils.errors import UserError
    from openrlhf.utils.run_folder import LOCK_NAME

    cfg = load_distill_config(_config(tmp_path, tiny_talking_teacher, tiny_dir))
    os.makedirs(cfg.run_dir)
    other = subprocess.Popen(["sleep", "30"])
    try:
        with open(os.path.join(cfg.run_dir, LOCK_NAME), "w") as f:
            json.dump({"pid": other.pid, "host": socket.gethostname(), "started": 0, "command": "distill"}, f)
        with pytest.raises(UserError, match=rf"run_dir .*PID {other.pid} on host {socket.gethostname()}"):
            run_distill(cfg, log=lambda *a: None, stop_after="prompts")
        assert sorted(os.listdir(cfg.run_dir)) == [LOCK_NAME]  # no stage ran
    finally:
        other.kill()
        other.wait()


def test_online_dadpo_runs_rounds_on_the_uncached_set(tiny_dir, tiny_talking_teacher, tmp_path):
    """baselines: online_dadpo trains daDPO with a round per step, answering as generate: did (its
    max_new_tokens), on the preference set without cached columns (the models score each round online),
    and the report lists it."""
    path = _config(tmp_path, tiny_talking_teacher, tiny_dir, ddpo=None, baselines={"online_dadpo": {}})
    cfg = load_distill_config(path)
    plan = plan_distill(cfg, check_packages=False)
    online = plan.stage("online_dadpo").config
    assert online.onpolicy.round_steps == 1 and online.onpolicy.max_new_tokens == 12
    assert online.data.dataset == os.path.join(cfg.run_dir, "sets", "preference.jsonl")
    assert plan.stage("dadpo").config.onpolicy.round_steps == 0
    run_distill(cfg, log=lambda *a: None)
    run = cfg.run_dir
    rounds = os.listdir(os.path.join(run, "online_dadpo", "checkpoints", "onpolicy"))
    steps = len(read_metrics(os.path.join(run, "online_dadpo")))
    assert steps >= 1 and len(rounds) == steps
    assert "on-policy daDPO" in json.load(open(os.path.join(run, "report", "report.json")))["models"]
