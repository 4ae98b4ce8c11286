"""The one-command pipeline (Algorithm 1) on tiny models: every stage runs, a rerun skips them."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from openrlhf.config import ConfigError

from tiny import REPO, read_metrics


def _sharegpt(path: str, n: int = 14) -> str:
    from tiny import TOPICS as topics

    records = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"Tell me about {topics[i % len(topics)]}."},
                                                 {"from": "gpt", "value": "Sure."}]} for i in range(n)]
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def _config(tmp_path, teacher: str, student: str, **extra) -> str:
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "teacher": teacher,
        "student": {"model_name_or_path": student},
        "prompts": {"source": _sharegpt(str(tmp_path / "sharegpt.json")), "train_size": 8, "eval_size": 4,
                    "seed": 0, "min_chars": 5, "max_chars": 200},
        "common": {"data.apply_chat_template": True, "data.max_len": 256, "ds.param_dtype": "fp32",
                   "ds.zero_stage": 0, "train.micro_batch_size": 2, "lr_warmup_ratio": 0},
        "generate": {"generate.max_new_tokens": 12, "generate.batch_size": 4},
        "sft": {"train.batch_size": 4, "train.max_epochs": 1, "adam.lr": 1e-3},
        "dadpo": {"train.batch_size": 4, "train.max_epochs": 1, "adam.lr": 1e-3, "model.beta": 0.1, "teacher.beta": 0.1},
        "ddpo": {"train.batch_size": 4, "adam.lr": 1e-3, "model.beta": 0.1},
        "cache_logps": True,
        **extra,
    }
    path = str(tmp_path / "distill.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def test_distill_runs_every_stage_then_skips_them(tiny_dir, tiny_talking_teacher, tmp_path):
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import Pipeline

    cfg = load_distill_config(_config(tmp_path, tiny_talking_teacher, tiny_dir))
    lines = []
    timings = Pipeline(cfg, log=lines.append).run_all()
    expected = ["prompts", "gen_teacher_train", "gen_student_train", "sets", "dsft", "score", "dadpo", "ddpo",
                "gen_teacher_eval", "gen_base_eval", "gen_dsft_eval", "gen_dadpo_eval", "gen_ddpo_eval", "report"]
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
    assert Pipeline(cfg, log=again.append).run_all() == {}
    assert sum("skipped" in line for line in again) == len(expected)


def test_distill_bad_stage_flag_fails_before_any_work(tiny_dir, tiny_talking_teacher, tmp_path):
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import Pipeline

    path = _config(tmp_path, tiny_talking_teacher, tiny_dir, sft={"train.batch_sise": 4})
    with pytest.raises(ConfigError, match="--train.batch_sise"):
        Pipeline(load_distill_config(path)).run_all()
    assert not os.path.exists(str(tmp_path / "run"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: x\nstudnt: {}\n")
    with pytest.raises(ConfigError, match="studnt: unknown key"):
        load_distill_config(str(bad))


@pytest.mark.slow
def test_distill_with_a_deepspeed_launcher_two_processes(tiny_dir, tiny_talking_teacher, tmp_path, monkeypatch):
    """Training and scoring stages started as 2-process ZeRO-3 DeepSpeed jobs by the pipeline."""
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import Pipeline

    from tiny import DEEPSPEED, free_port

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    path = _config(tmp_path, tiny_talking_teacher, tiny_dir, ddpo=None,
                   launcher=" ".join(DEEPSPEED) + f" --num_gpus 2 --master_addr 127.0.0.1 --master_port {free_port()}")
    cfg = load_distill_config(path)
    cfg.common["ds.zero_stage"] = 3
    timings = Pipeline(cfg).run_all()
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
    import openrlhf.recipes.score as score_recipe  # where the registry's "openrlhf.recipes.score:score_logps" points
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import Pipeline

    calls = []
    real = score_recipe.score_logps
    monkeypatch.setattr(score_recipe, "score_logps", lambda cfg: calls.append(cfg) or real(cfg))
    # The talking teacher shares the student's tokenizer, so the KL baselines apply.
    path = _config(tmp_path, tiny_talking_teacher, tiny_dir, ddpo=None,
                   baselines={"dsft_kl": {"kd.coef": 0.1}, "ddpo": {}, "ddpo_kl": {}, "rdpo": {}, "dkto": {}},
                   sweep={"dadpo": {"model.beta": [0.1, 0.5], "teacher.beta": [0.01, 0.1]}})
    cfg = load_distill_config(path)
    timings = Pipeline(cfg, log=lambda *a: None).run_all()
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
    assert Pipeline(cfg, log=again.append).run_all() == {}  # finished runs are skipped


def test_distill_with_a_judge_section_writes_the_judged_table(tiny_dir, tiny_talking_teacher, tmp_path):
    """judge: the benchmarks' answers of every model and the three judged evaluations, through a real
    (local) OpenAI-compatible endpoint; the table lands in the run's report."""
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import Pipeline

    from judge_server import FakeJudge

    def grade(messages):
        text = messages[-1]["content"]
        if "model_identifier" in text:  # AlpacaEval 2's annotator: m and M equally likely -> preference 1.5
            return {"content": "m", "top_logprobs": [[("m", -0.7), ("M", -0.7)]]}
        return "OK" if "Say OK" in text else ("Rating: [[6]]" if "[[rating]]" in messages[0]["content"] +
                                              text else "[[C]]")

    with FakeJudge(grade) as server:
        path = _config(tmp_path, tiny_talking_teacher, tiny_dir, ddpo=None,
                       judge={"base_url": server.url, "model": "fake-judge", "max_items": 2, "concurrency": 2})
        cfg = load_distill_config(path)
        timings = Pipeline(cfg, log=lambda *a: None).run_all()
    for stage in ("prompts_mtbench", "gen_teacher_mtbench", "gen_dadpo_alpacaeval", "judge_indomain",
                  "judge_mtbench", "judge_alpacaeval", "report"):
        assert stage in timings, stage
    judged = json.load(open(os.path.join(cfg.run_dir, "report", "judge", "report.json")))
    assert judged["models"]["daDPO"]["mtbench"]["score"] == 6.0
    assert judged["models"]["daDPO"]["indomain"]["tie"] == 2  # max_items 2; every pair judged [[C]]: ties
    assert judged["models"]["teacher"]["alpacaeval"]["win_rate"] == 50.0
    assert "teacher" not in judged["models"] or "indomain" not in judged["models"]["teacher"]
    assert "## LLM judge" in open(os.path.join(cfg.run_dir, "report", "report.md")).read()


@pytest.mark.slow
def test_sweep_point_chosen_on_validation_prompts_is_daDPO(tiny_dir, tiny_talking_teacher, tmp_path):
    """select_by: the grid is compared on the validation prompts only; the best point becomes run_dir/dadpo
    and is the one daDPO row of the held-out report (compared prompt by prompt with the others)."""
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import Pipeline

    path = _config(tmp_path, tiny_talking_teacher, tiny_dir, ddpo=None, select_by="teacher_nll",
                   sweep={"dadpo": {"model.beta": [0.1, 0.5]}})
    with pytest.raises(ConfigError, match="select_by: needs validation prompts"):
        load_distill_config(path)  # never chosen on the held-out prompts
    data = yaml.safe_load(open(path))
    data["prompts"]["val_size"] = 4
    yaml.safe_dump(data, open(path, "w"))
    cfg = load_distill_config(path)
    timings = Pipeline(cfg, log=lambda *_: None).run_all()
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


def test_report_stages_score_in_the_runs_dtype():
    """select_by and the report score with the teacher in the run's ds.param_dtype (bf16 on a GPU unless
    common: says otherwise), not in fp32 (evaluate_responses itself runs fp32 on a CPU)."""
    from types import SimpleNamespace

    from openrlhf.pipeline.distill import Pipeline

    def dtype(common):
        return Pipeline(SimpleNamespace(common=common, run_dir="r"), log=lambda *a: None).eval_dtype()

    assert dtype({}) == "bf16" and dtype({"ds.param_dtype": "fp32"}) == "fp32"
    assert dtype({"ds.param_dtype": "fp16"}) == "fp16"


def test_kl_baselines_get_the_kd_coef_default_of_train_kd(tiny_dir, tmp_path):
    """One --kd.coef default for the KL baselines: the pipeline's dsft_kl and ddpo_kl get train_kd's (0.4, as the
    README says) when their sections give none, and a section's own value wins. Planned only, nothing runs."""
    from openrlhf.config import load_config
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import Pipeline

    kd_default = load_config(["--model.model_name_or_path", "m", "--teacher.model_name_or_path", "t",
                              "--data.dataset", "d"], "kd", check_paths=False, check_packages=False).kd.coef
    assert kd_default == 0.4
    for given, want in [({}, kd_default), ({"kd.coef": 0.1}, 0.1)]:
        path = _config(tmp_path, tiny_dir, tiny_dir, baselines={"dsft_kl": dict(given), "ddpo_kl": dict(given)})
        pipe = Pipeline(load_distill_config(path), log=lambda *a: None)
        runs = {run.name: run for run in pipe.train_runs()}
        for name in ("dsft_kl", "ddpo_kl"):
            cfg = pipe.stage_config(runs[name].task, *runs[name].maps, check_packages=False)
            assert cfg.kd.coef == want, (name, given)
