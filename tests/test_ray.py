"""The Ray path on this CPU machine: a local Ray head (a child process on 127.0.0.2, ended by its process id,
never `ray stop`), CPU actors with gloo. train_dadpo_ray against train_dadpo under the deepspeed launcher,
colocated and not; a SIGKILLed policy actor, then the resubmitted job resuming; generation engines as Ray
actors; the tiny distill pipeline submitted with `ray job submit`."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tiny import (
    REPO,
    as_flags,
    background_server,
    base_flags,
    free_port,
    launch_env,
    long_pref_rows,
    pref_rows,
    read_metrics,
    run_deepspeed,
    train_losses,
    write_jsonl,
)

pytestmark = [pytest.mark.ray]

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head with 2 CPUs on 127.0.0.2 (its dashboard, for job submission, on 127.0.0.1)."""
    pytest.importorskip("ray")
    gcs, dash = free_port(), free_port()
    env = launch_env()
    cmd = RAY + [
        "start",
        *as_flags({"head": None, "block": None, "num-cpus": "2", "node-ip-address": "127.0.0.2", "port": gcs}),
    ]
    cmd += ["--dashboard-host", "127.0.0.1", "--dashboard-port", dash, "--include-dashboard", "true"]
    cmd += ["--disable-usage-stats"]
    dashboard = f"http://127.0.0.1:{dash}"
    log = str(tmp_path_factory.mktemp("ray_head") / "head.log")
    # ended by its process group: the raylet, GCS and workers it started
    with background_server(cmd, env, dashboard + "/api/version", log, "the Ray head", timeout=120):
        yield {"address": f"127.0.0.2:{gcs}", "dashboard": dashboard, "env": env}
        import ray

        if ray.is_initialized():
            ray.shutdown()


def test_the_address_probe_lets_a_real_cluster_through(ray_head):
    """--ray.address is probed before ray.init (no cluster there: a one-line error, see
    test_bad_setup.py); a running head's GCS answers the probe."""
    from openrlhf.utils.ray_group import probe_cluster

    probe_cluster(ray_head["address"], "--ray.address", timeout=10)


def _flags(tiny_dir, teacher, data, out, zero="3"):
    """32 pairs, 2 epochs of 4-pair steps (16 steps), ZeRO-3: the same run for every test here."""
    flags = base_flags(
        tiny_dir,
        data,
        out,
        *as_flags(
            {
                "teacher.model_name_or_path": teacher,
                "train.batch_size": "4",
                "train.max_epochs": "2",
                "model.beta": "0.5",
                "teacher.beta": "0.1",
                "adam.lr": "1e-2",
            }
        ),
    )
    flags[flags.index("--ds.zero_stage") + 1] = zero
    return flags


RAY_FLAGS = as_flags(
    {
        "actor.num_gpus_per_node": "2",
        "ref.num_gpus_per_node": "1",
        "teacher.num_gpus_per_node": "1",
        "ray.num_cpus_per_actor": "0.5",
    }
)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(str(tmp_path_factory.mktemp("ray_data") / "p.jsonl"), pref_rows(32))


@pytest.fixture(scope="module")
def reference_run(tiny_dir, tiny_teacher_other_family, pairs, tmp_path_factory):
    """train_dadpo under `deepspeed --num_gpus 2` (ZeRO-3): the losses the Ray trainer must give."""
    out = str(tmp_path_factory.mktemp("ray_ref") / "ds")
    run_deepspeed("openrlhf.cli.train_dadpo", _flags(tiny_dir, tiny_teacher_other_family, pairs, out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("colocate", [False, True])
def test_dadpo_ray_matches_the_deepspeed_launcher(
    colocate, ray_head, reference_run, tiny_dir, tiny_teacher_other_family, pairs, tmp_path
):
    from transformers import AutoModelForCausalLM

    from openrlhf.config import load_config
    from openrlhf.recipes.ray_preference import train_dadpo_ray

    out = str(tmp_path / "ray")
    flags = _flags(tiny_dir, tiny_teacher_other_family, pairs, out) + RAY_FLAGS + ["--ray.address", ray_head["address"]]
    if colocate:
        flags.append("--train.colocate_all")
    last = train_dadpo_ray(load_config(flags, "dadpo_ray"))
    ref, got = read_metrics(reference_run), read_metrics(out)
    assert [r["step"] for r in got] == list(range(1, 17))
    assert train_losses(out) == pytest.approx(train_losses(reference_run), abs=1e-5)
    assert set(got[0]) == set(ref[0])  # the same metrics.jsonl keys
    # Rewards are beta x differences of log-prob sums of ~6: fp32 sums batched differently agree to ~1e-5 relative.
    for key in ("chosen_reward", "teacher_chosen_reward", "acc"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=1e-4, abs=1e-5)
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 400
    actors = json.load(open(os.path.join(out, "ray_actors.json")))
    assert sorted((a["group"], a["rank"]) for a in actors) == [
        ("policy", 0),
        ("policy", 1),
        ("reference", 0),
        ("teacher", 0),
    ]
    timing = json.load(open(os.path.join(out, "ray_timing.json")))
    assert timing["ray_wait_seconds"] <= timing["ray_policy_seconds"] and last["ray_teacher_busy_seconds"] > 0


@pytest.mark.both_legs
@pytest.mark.slow
def test_ray_frozen_groups_in_bf16_equal_the_policy_at_step_0(ray_head, tiny_long_dir, tmp_path):
    """The default GPU numerics (bf16, ZeRO-2) on Ray, positions past 1024: the reference and the teacher (both
    the policy's own weights here) are separate actors, and at step 0 they compute exactly what the policy does."""
    from openrlhf.config import load_config
    from openrlhf.recipes.ray_preference import train_dadpo_ray

    data = write_jsonl(str(tmp_path / "long.jsonl"), long_pref_rows(2))
    out = str(tmp_path / "ray_bf16")
    flags = base_flags(
        tiny_long_dir,
        data,
        out,
        *as_flags(
            {
                "teacher.model_name_or_path": tiny_long_dir,
                "train.batch_size": "2",
                "data.max_len": "4096",
                "model.beta": "0.5",
                "teacher.beta": "0.1",
            }
        ),
    )
    flags[flags.index("--ds.param_dtype") + 1] = "bf16"
    train_dadpo_ray(load_config(flags + RAY_FLAGS + ["--ray.address", ray_head["address"]], "dadpo_ray"))
    first = read_metrics(out)[0]
    for key in ("chosen_reward", "reject_reward", "teacher_chosen_reward", "teacher_reject_reward"):
        assert first[key] == 0.0, (key, first)
    assert first["loss"] == float(np.float32(math.log(2)))


@pytest.mark.main_leg
@pytest.mark.slow
def test_a_killed_policy_actor_stops_the_job_and_a_resubmitted_job_resumes(
    ray_head, reference_run, tiny_dir, tiny_teacher_other_family, pairs, tmp_path
):
    out = str(tmp_path / "killed")
    flags = (
        _flags(tiny_dir, tiny_teacher_other_family, pairs, out)
        + RAY_FLAGS
        + ["--ckpt.save_steps", "2", "--ray.address", ray_head["address"]]
    )
    cmd = [sys.executable, "-m", "openrlhf.cli.train_dadpo_ray", *flags]
    driver = subprocess.Popen(
        cmd, env=ray_head["env"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ckpt = os.path.join(out, "checkpoints", "global_step2")
    deadline = time.time() + 600
    while not os.path.exists(ckpt):
        assert driver.poll() is None, driver.communicate()
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.2)
    actors = json.load(open(os.path.join(out, "ray_actors.json")))
    victim = next(a for a in actors if a["group"] == "policy" and a["rank"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 2, stdout[-2000:] + stderr[-3000:]
    assert "error: the policy group's rank 1 actor died" in stderr and "--ckpt.load_enable" in stderr
    assert len(train_losses(out)) < 16  # it stopped before the end

    res = subprocess.run(
        cmd + ["--ckpt.load_enable"], env=ray_head["env"], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "resumed from" in res.stdout + res.stderr
    assert train_losses(out) == pytest.approx(train_losses(reference_run), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("colocate", [True, False])
def test_colocated_frozen_groups_never_score_beside_the_policy(colocate, ray_head, tiny_dir, pairs, tmp_path):
    """ray_timeline.json: when each actor computed. With --train.colocate_all (the frozen groups on the
    policy's GPUs) no scoring call of the reference group overlaps the policy's run (its loading, its steps:
    forwards, backwards, optimizer steps, its saving): all the scoring comes first, then the frozen actors
    end. With groups of their own the reference scores ahead while the policy runs (the overlap that hides
    its time; the scoring was queued beside the policy's run the same way with colocate_all before)."""
    from openrlhf.config import load_config
    from openrlhf.recipes.ray_preference import train_dpo_ray

    out = str(tmp_path / "o")
    flags = base_flags(
        tiny_dir,
        pairs,
        out,
        *as_flags(
            {
                "train.batch_size": "4",
                "actor.num_gpus_per_node": "1",
                "ref.num_gpus_per_node": "1",
                "ray.num_cpus_per_actor": "0.5",
                "ray.address": ray_head["address"],
            }
        ),
    )
    if colocate:
        flags.append("--train.colocate_all")
    train_dpo_ray(load_config(flags, "dpo_ray"))
    events = json.load(open(os.path.join(out, "ray_timeline.json")))["traceEvents"]

    def spans(group, name):
        return [(e["ts"], e["ts"] + e["dur"]) for e in events if e["pid"] == group and e["name"] == name]

    runs, steps, scores = spans("policy", "policy run"), spans("policy", "policy step"), spans("reference", "score")
    assert len(runs) == 1 and len(steps) == 8 and len(scores) == 8  # 32 pairs, 4 a step: each batch scored once
    assert all(runs[0][0] <= start and end <= runs[0][1] for start, end in steps)

    def overlapping(spans_a, spans_b):
        return [(a, b) for a in spans_a for b in spans_b if a[0] < b[1] and b[0] < a[1]]

    if colocate:
        assert not overlapping(scores, runs), overlapping(scores, runs)
        assert not overlapping(scores, steps)
        assert max(end for _, end in scores) <= runs[0][0]
    else:
        assert overlapping(scores, runs)


def test_generation_engines_as_ray_actors_answer_like_the_hf_backend(ray_head, tiny_talking_teacher, tmp_path):
    from openrlhf.config import load_config
    from openrlhf.recipes.generate import generate

    prompts = write_jsonl(
        str(tmp_path / "prompts.jsonl"),
        [  # two settings: rows 1 and 3 carry their own max_new_tokens
            {"id": i, "prompt": f"Tell me about {t}.", **({"max_new_tokens": 3} if i in (1, 3) else {})}
            for i, t in enumerate(["the sea", "a fox", "tea", "rain", "books"])
        ],
    )
    common = as_flags(
        {
            "model.model_name_or_path": tiny_talking_teacher,
            "data.dataset": prompts,
            "data.apply_chat_template": None,
            "generate.max_new_tokens": "8",
            "generate.batch_size": "2",
            "ds.param_dtype": "fp32",
        }
    )
    here = str(tmp_path / "here.jsonl")
    generate(load_config(common + ["--generate.output_path", here], "generate"))
    on_ray, said = str(tmp_path / "ray.jsonl"), []
    stats = generate(
        load_config(
            common
            + as_flags(
                {
                    "generate.output_path": on_ray,
                    "generate.ray": None,
                    "vllm.num_engines": "2",
                    "ray.num_cpus_per_actor": "0.5",
                    "ray.address": ray_head["address"],
                }
            ),
            "generate",
        ),
        log=said.append,
    )
    assert stats["generated"] == 5
    assert sum("engine(s) as Ray actors" in x for x in said) == 1  # the engines started once for both settings

    def answers(path):
        return {r["id"]: (r["response"], r["finish_reason"]) for r in map(json.loads, open(path))}

    assert answers(on_ray) == answers(here)
    assert [answers(on_ray)[i][1] for i in (1, 3)] == ["length", "length"]  # cut at their own 3 tokens
    assert [json.loads(x)["id"] for x in open(on_ray)] == [0, 1, 2, 3, 4]  # prompt-file order


def test_a_group_that_does_not_fit_is_a_clear_error(ray_head, tiny_dir, tiny_teacher_other_family, pairs, tmp_path):
    from openrlhf.config import load_config
    from openrlhf.recipes.ray_preference import train_dadpo_ray
    from openrlhf.utils.errors import UserError

    flags = _flags(tiny_dir, tiny_teacher_other_family, pairs, str(tmp_path / "o")) + as_flags(
        {
            "actor.num_gpus_per_node": "2",
            "ray.num_cpus_per_actor": "4",
            "ray.placement_timeout": "3",
            "ray.address": ray_head["address"],
        }
    )
    with pytest.raises(UserError, match="no room for the policy group: 2 bundle"):
        train_dadpo_ray(load_config(flags, "dadpo_ray"))


def test_ray_flags_are_checked_before_any_work(tiny_dir, pairs):
    from openrlhf.config import ConfigError, load_config

    base = ["--model.model_name_or_path", tiny_dir, "--data.dataset", pairs, "--data.prompt_key", "prompt"]
    with pytest.raises(ConfigError) as e:
        load_config(base + ["--kd.coef", "0.2", "--actor.num_nodes", "0", "--eval.dataset", pairs], "dpo_ray")
    flags = {p.split(":")[0] for p in e.value.problems}
    assert {"--kd.coef", "--actor.num_nodes", "--eval.dataset"} <= flags
    with pytest.raises(ConfigError, match="--teacher.num_gpus_per_node.*not used by train_dadpo"):
        load_config(base + ["--teacher.num_gpus_per_node", "2"], "dadpo")


@pytest.mark.main_leg
@pytest.mark.slow
def test_tiny_distill_pipeline_as_one_ray_job(ray_head, tiny_dir, tiny_talking_teacher, tmp_path):
    """`ray job submit ... -- python -m openrlhf.cli.distill --config` with launcher: ray: every stage on
    the cluster (generation engines, the dSFT / scoring group, daDPO's groups); status SUCCEEDED."""
    import yaml
    from test_distill import _config

    path = _config(
        tmp_path,
        tiny_talking_teacher,
        tiny_dir,
        ddpo=None,
        launcher="ray",
        ray={"ray.num_cpus_per_actor": 0.5, "actor.num_gpus_per_node": 2, "vllm.num_engines": 2},
    )
    work = tmp_path / "job"
    work.mkdir()
    cfg = yaml.safe_load(open(path))
    (work / "distill.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run(
        RAY
        + [
            "job",
            "submit",
            "--address",
            ray_head["dashboard"],
            "--working-dir",
            str(work),
            "--",
            sys.executable,
            "-m",
            "openrlhf.cli.distill",
            "--config",
            "distill.yaml",
        ],
        env=ray_head["env"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(ray_head["dashboard"]).list_jobs()
    assert jobs and jobs[-1].status == JobStatus.SUCCEEDED, out[-4000:]
    run = cfg["run_dir"]
    for folder in ("dsft", "dadpo"):
        assert os.path.exists(os.path.join(run, folder, "model.safetensors"))
    assert os.path.exists(os.path.join(run, "dadpo", "ray_actors.json"))
    assert os.path.exists(os.path.join(run, "report", "report.md"))
