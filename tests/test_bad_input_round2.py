"""Bad input, round two (issue 24): a reference of another tokenizer, a Ray address where no cluster
answers, a judge answering without choices, a file that is not GGUF, LoRA targets that match nothing,
a token budget smaller than a row, unused distill sections; and the stated behaviours around them."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest

from openrlhf.config import ConfigError, load_config
from openrlhf.utils.errors import DataError, UserError

from tiny import base_flags, make_tiny, pref_rows, run_module, score_flags, write_jsonl


@pytest.fixture(scope="module")
def ref_bigger_vocab(tmp_path_factory):
    """Another tokenizer with MORE tokens than the policy's: the policy's ids all fit its embedding."""
    return make_tiny(str(tmp_path_factory.mktemp("ref_big")), style="chatml", vocab_size=480, seed=5)


# ---- 1. a DPO reference of another tokenizer -------------------------------------------------------------


@pytest.mark.parametrize("which", ["smaller", "bigger"])
def test_dpo_refuses_a_reference_of_another_tokenizer(
    tiny_dir, tiny_teacher_other_family, ref_bigger_vocab, pref_jsonl, tmp_path, which
):
    from openrlhf.recipes.dpo import train_dpo

    ref = tiny_teacher_other_family if which == "smaller" else ref_bigger_vocab
    out = str(tmp_path / "dpo")
    cfg = load_config(
        base_flags(tiny_dir, pref_jsonl, out, "--ref.model_name_or_path", ref, "--train.batch_size", "4"), task="dpo"
    )
    with pytest.raises(DataError) as e:
        train_dpo(cfg)
    msg = str(e.value)
    assert msg.startswith("--ref.model_name_or_path: ")
    assert ref in msg and tiny_dir in msg and "share the policy's tokenizer" in msg
    assert not os.path.exists(out)  # refused before the strategy, the logger or any model


def test_a_reference_or_kd_teacher_whose_embedding_is_smaller_than_the_tokenizer_is_refused(
    tiny_dir, pref_jsonl, tmp_path
):
    """The policy's tokenizer with a model of fewer embedding rows (its config's vocab_size): ids past the table
    would fail in the forward with an index error; refused, naming the flag and both sizes, before any model."""
    from transformers import AutoTokenizer

    from openrlhf.recipes.dpo import train_dpo
    from openrlhf.recipes.kd import train_kd

    from tiny import make_model, sft_rows

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    small = str(tmp_path / "small")
    make_model(small, tok)
    config = json.load(open(os.path.join(small, "config.json")))
    n = config["vocab_size"]
    config["vocab_size"] = n - 10  # the table only: the check reads config.json before any weight
    json.dump(config, open(os.path.join(small, "config.json"), "w"))
    out = str(tmp_path / "dpo")
    cfg = load_config(
        base_flags(tiny_dir, pref_jsonl, out, "--ref.model_name_or_path", small, "--train.batch_size", "4"), task="dpo"
    )
    with pytest.raises(
        DataError, match=rf"--ref.model_name_or_path: the model {small} has {n - 10} embedding rows .* with {n}"
    ):
        train_dpo(cfg)
    assert not os.path.exists(out)
    sft = write_jsonl(str(tmp_path / "sft.jsonl"), sft_rows(4))
    kd = load_config(
        base_flags(
            tiny_dir, sft, str(tmp_path / "kd"), "--teacher.model_name_or_path", small, "--train.batch_size", "4"
        ),
        task="kd",
    )
    with pytest.raises(DataError, match=r"--teacher.model_name_or_path: the model .* embedding rows"):
        train_kd(kd)


def test_dadpo_and_score_logps_refuse_a_reference_of_another_tokenizer(
    tiny_dir, tiny_teacher_other_family, ref_bigger_vocab, pref_jsonl, tmp_path
):
    from openrlhf.recipes.dadpo import train_dadpo
    from openrlhf.recipes.score import score_logps

    cfg = load_config(
        base_flags(
            tiny_dir,
            pref_jsonl,
            str(tmp_path / "d"),
            "--ref.model_name_or_path",
            ref_bigger_vocab,
            "--teacher.model_name_or_path",
            tiny_teacher_other_family,
            "--train.batch_size",
            "4",
        ),
        task="dadpo",
    )
    with pytest.raises(DataError, match="another tokenizer than the policy"):
        train_dadpo(cfg)
    cfg = load_config(
        score_flags(tiny_dir, pref_jsonl, str(tmp_path / "s"), "--ref.model_name_or_path", ref_bigger_vocab),
        task="score_logps",
    )
    with pytest.raises(DataError, match=r"--ref.model_name_or_path: the reference .* has another tokenizer"):
        score_logps(cfg)
    assert not os.path.exists(str(tmp_path / "s" / ".score_partial"))


def test_ray_driver_refuses_a_reference_of_another_tokenizer_before_connecting(
    tiny_dir, ref_bigger_vocab, pref_jsonl, tmp_path
):
    pytest.importorskip("ray")
    from openrlhf.recipes.ray_preference import train_dpo_ray

    cfg = load_config(
        base_flags(
            tiny_dir,
            pref_jsonl,
            str(tmp_path / "r"),
            "--ref.model_name_or_path",
            ref_bigger_vocab,
            "--train.batch_size",
            "4",
            "--ray.address",
            "127.0.0.1:1",
        ),
        task="dpo_ray",
    )
    with pytest.raises(DataError, match="another tokenizer than the policy"):
        train_dpo_ray(cfg)


def test_reference_tokenizer_check_compares_ids_of_the_rendered_text(tiny_dir, tiny_teacher_same_vocab, tmp_path):
    """Same vocabulary (the same tokenizer files): accepted. Same vocabulary, other tokenisation of the text
    (the pre-tokenizer changed): refused, naming the row."""
    from transformers import AutoTokenizer

    from openrlhf.datasets.preference_dataset import PreferenceDataset, rendered_pairs
    from openrlhf.datasets.tokenizer import check_reference_tokenizer

    cfg = load_config(base_flags(tiny_dir, "x.jsonl", str(tmp_path / "o")), task="dpo", check_paths=False)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ds = PreferenceDataset(pref_rows(4), tok, cfg.data, "pairs.jsonl")
    check_reference_tokenizer(ds.renderer, rendered_pairs(ds), tiny_teacher_same_vocab, tiny_dir)

    # The same vocabulary and merges, but no merges across spaces any more: other ids for the same text.
    other = str(tmp_path / "ref_split")
    raw = json.load(open(os.path.join(tiny_dir, "tokenizer.json")))
    raw["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated", "invert": False},
            raw["pre_tokenizer"],
        ],
    }
    os.makedirs(other)
    for name in os.listdir(tiny_dir):
        if name != "tokenizer.json":
            with open(os.path.join(tiny_dir, name), "rb") as src, open(os.path.join(other, name), "wb") as dst:
                dst.write(src.read())
    json.dump(raw, open(os.path.join(other, "tokenizer.json"), "w"))
    with pytest.raises(
        DataError, match=r"has the vocabulary of the policy .* tokenizes the text of pairs.jsonl, row 1"
    ):
        check_reference_tokenizer(ds.renderer, rendered_pairs(ds), other, tiny_dir)


# ---- 2. a Ray address where no cluster answers -------------------------------------------------------------


@pytest.mark.main_leg
@pytest.mark.parametrize("address", ["127.0.0.1:{free}", "nowhere.invalid:6379"])
def test_ray_trainer_on_an_address_without_a_cluster_is_a_one_line_error(
    tiny_dir, tiny_teacher_other_family, pref_jsonl, tmp_path, address
):
    """It used to hang for ever (Ray's own retries); now exit 2 within seconds, naming the flag."""
    import time

    from tiny import free_port

    pytest.importorskip("ray")
    address = address.format(free=free_port())
    flags = base_flags(
        tiny_dir,
        pref_jsonl,
        str(tmp_path / "out"),
        "--teacher.model_name_or_path",
        tiny_teacher_other_family,
        "--train.batch_size",
        "4",
        "--ray.address",
        address,
    )
    t = time.time()
    res = run_module("openrlhf.cli.train_dadpo_ray", flags, timeout=240)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --ray.address {address}: no Ray cluster answers there"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert time.time() - t < 200


def test_ray_address_probe_tells_a_listener_that_is_not_a_gcs(tmp_path):
    """A port where something else listens (an HTTP server, as the dashboard's 8265) is refused too."""
    import http.server
    import socketserver
    import threading

    pytest.importorskip("ray")
    from openrlhf.utils.ray_group import probe_cluster

    with socketserver.TCPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        address = f"127.0.0.1:{srv.server_address[1]}"
        try:
            with pytest.raises(
                UserError, match=rf"--ray.address {address}: no Ray cluster answers there .*not a Ray GCS"
            ):
                probe_cluster(address, "--ray.address", timeout=5)
        finally:
            srv.shutdown()
    with pytest.raises(UserError, match="expected HOST:PORT"):
        probe_cluster("6379", "--ray.address")


# ---- 3. a judge answering without choices; report.json without NaN ------------------------------------------


def _judge_files(tmp_path):
    rows = lambda name, answers: write_jsonl(
        str(tmp_path / f"{name}.jsonl"),
        [  # noqa: E731
            {"id": i, "prompt": f"Tell me a story {i}.", "response": a, "finish_reason": "stop"}
            for i, a in enumerate(answers)
        ],
    )
    return rows("teacher", ["medium answer"] * 3), rows("cand", ["a much longer answer"] * 3)


def _judge(url, out, teacher, cand, *extra):
    from openrlhf.eval.run import judge

    return judge(
        load_config(
            [
                "--judge.base_url",
                url,
                "--judge.model",
                "fake-judge",
                "--judge.concurrency",
                "2",
                "--output_dir",
                out,
                "--task",
                "indomain",
                "--teacher_responses",
                teacher,
                "--candidate",
                f"long={cand}",
                *extra,
            ],
            "judge",
        ),
        log=lambda *a: None,
    )


@pytest.mark.main_leg
def test_judge_answer_without_choices_is_retried_then_a_clear_error(tmp_path):
    pytest.importorskip("openai")
    from judge_server import FakeJudge

    teacher, cand = _judge_files(tmp_path)
    with FakeJudge(lambda m: "[[A]]", empty_first=3) as server:  # the check request and two judgments
        report = _judge(server.url, str(tmp_path / "a"), teacher, cand, "--judge.max_retries", "5")
        assert server.emptied == 3 and len(server.requests) == 1 + 6
        assert report["judge"]["indomain"]["requests_sent"] == 6
    with FakeJudge(lambda m: "[[A]]", empty_first=10**6) as server:
        with pytest.raises(UserError, match=r'--judge.base_url .*still failed after 2 retries .*"choices": \[\]'):
            _judge(server.url, str(tmp_path / "b"), teacher, cand, "--judge.max_retries", "2")


def test_report_json_is_strict_json_when_every_verdict_is_unparsed(tmp_path):
    pytest.importorskip("openai")
    from judge_server import FakeJudge

    teacher, cand = _judge_files(tmp_path)
    out = str(tmp_path / "r")
    with FakeJudge(lambda m: "OK" if "Say OK" in m[-1]["content"] else "I cannot decide.") as server:
        report = _judge(server.url, out, teacher, cand)
    assert math.isnan(report["models"]["long"]["indomain"]["omega"])  # in memory: no number
    text = open(os.path.join(out, "report.json")).read()
    assert "NaN" not in text

    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    on_disk = json.loads(text, parse_constant=refuse)["models"]["long"]["indomain"]
    assert on_disk["omega"] is None and on_disk["position_bias"] is None and on_disk["unparsed"] == 3
    assert "| long | - | - | -% (0/0/0) | - | 3 |" in open(os.path.join(out, "report.md")).read()
    # A second run reads that report back (nulls) and adds to it.
    with FakeJudge(lambda m: "OK" if "Say OK" in m[-1]["content"] else "[[A]]") as server:
        _judge(server.url, out, teacher, cand, "--judge.cache_path", str(tmp_path / "other_cache.jsonl"))
    again = json.load(open(os.path.join(out, "report.json")))["models"]["long"]["indomain"]
    assert (again["omega"], again["tie"]) == (0.0, 3)  # always "A": each order prefers another answer


# ---- 4. a file that is not GGUF --------------------------------------------------------------------------------


def _distill_yaml(tmp_path, teacher, student, prune=None, **extra):
    prune = {"prune": prune} if prune else {}
    import yaml

    prompts = str(tmp_path / "sharegpt.json")
    json.dump(
        [
            {
                "id": f"c{i}",
                "conversations": [
                    {"from": "human", "value": f"Tell me about item {i}."},
                    {"from": "gpt", "value": "Sure."},
                ],
            }
            for i in range(14)
        ],
        open(prompts, "w"),
    )
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "teacher": teacher,
        "student": {"model_name_or_path": student, **prune},
        "prompts": {"source": prompts, "train_size": 8, "eval_size": 4, "min_chars": 5},
        "common": {
            "data.apply_chat_template": True,
            "ds.param_dtype": "fp32",
            "ds.zero_stage": 0,
            "train.micro_batch_size": 2,
        },
        "sft": {"train.batch_size": 4},
        "dadpo": {"train.batch_size": 4},
        **extra,
    }
    path = str(tmp_path / "distill.yaml")
    yaml.safe_dump(cfg, open(path, "w"))
    return path


@pytest.mark.main_leg
def test_a_file_that_is_not_gguf_is_one_line_before_any_folder(tiny_dir, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text('{"not": "gguf"}\n')
    out = tmp_path / "converted"
    res = run_module("openrlhf.cli.convert_gguf", ["--gguf", str(fake), "--output_dir", str(out)], timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip() == (
        f"error: {fake} is not a GGUF file: it starts with b'{{\"no', not the GGUF magic bytes b'GGUF'"
    )
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["model.gguf"]

    res = run_module(
        "openrlhf.cli.distill", ["--config", _distill_yaml(tmp_path, f"gguf:{fake}", tiny_dir)], timeout=120
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: {fake} is not a GGUF file")
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


# ---- 5. LoRA target modules that match nothing ------------------------------------------------------------------


def test_lora_target_modules_are_checked_against_the_model_before_deepspeed(tiny_dir, tmp_path):
    pytest.importorskip("peft")
    from openrlhf.recipes.common import check_lora_targets, make_strategy

    flags = lambda *t: load_config(
        base_flags(
            tiny_dir,
            "x.jsonl",
            str(tmp_path / "o"),
            "--ds.lora.rank",
            "4",  # noqa
            "--ds.lora.target_modules",
            *t,
        ),
        task="sft",
        check_paths=False,
    )
    with pytest.raises(UserError) as e:
        make_strategy(flags("q_proj", "nope_proj"))  # refused before the strategy (DeepSpeed) is set up
    msg = str(e.value)
    assert msg.startswith("--ds.lora.target_modules: 'nope_proj' names no module of " + tiny_dir)
    assert "q_proj, " in msg and "v_proj" in msg and "down_proj" in msg and "'q_proj'" not in msg
    with pytest.raises(UserError, match="'mlp' is a LlamaMLP, not a layer LoRA adapts"):
        check_lora_targets(flags("mlp"))
    check_lora_targets(flags("q_proj", "self_attn.v_proj"))  # peft's suffix rule: accepted
    check_lora_targets(flags("all-linear"))


@pytest.mark.main_leg
def test_train_sft_with_a_lora_target_that_does_not_exist_is_one_line(tiny_dir, sft_jsonl, tmp_path):
    pytest.importorskip("peft")
    res = run_module(
        "openrlhf.cli.train_sft",
        base_flags(
            tiny_dir,
            sft_jsonl,
            str(tmp_path / "o"),
            "--train.batch_size",
            "4",
            "--ds.lora.rank",
            "4",
            "--ds.lora.target_modules",
            "nope_proj",
        ),
        timeout=240,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("error: --ds.lora.target_modules: 'nope_proj' names no")
    assert "Traceback" not in res.stderr and "NoMatchingPeftModuleError" not in res.stderr


# ---- 6. a token budget smaller than the rows; rows a last global batch leaves out; a run all in warm-up ----------


def _sft(flags, capsys):
    from openrlhf.recipes.sft import train_sft

    capsys.readouterr()
    last = train_sft(load_config(flags, task="sft"))
    return last, capsys.readouterr().out


def test_dynamic_batch_budget_exceeded_and_unused_rows_are_said_before_training(tiny_dir, tmp_path, capsys):
    from tiny import sft_rows

    data = write_jsonl(str(tmp_path / "sft.jsonl"), sft_rows(6))
    out = str(tmp_path / "o")
    _, printed = _sft(
        base_flags(
            tiny_dir,
            data,
            out,
            "--train.batch_size",
            "4",
            "--train.dynamic_batch_enable",
            "--train.max_tokens_per_gpu",
            "8",
        ),
        capsys,
    )
    lines = printed.splitlines()
    budget = [x for x in lines if x.startswith("warning: --train.max_tokens_per_gpu 8: 6 of 6 rows have more tokens")]
    unused = [
        x
        for x in lines
        if x.startswith(
            "data: 6 rows make 1 global batches of --train.batch_size 4; each "
            "epoch leaves the last 2 rows of its (shuffled) order unused"
        )
    ]
    assert budget and unused, printed[-3000:]
    # Said before the first step (the metrics of step 1 come later in the file, and training did run).
    assert len(open(os.path.join(out, "metrics.jsonl")).read().splitlines()) >= 1


def test_a_run_all_in_warm_up_says_its_model_equals_the_input(tiny_dir, tmp_path, capsys):
    """One optimizer step with --lr_warmup_ratio 0.03 (ceil(0.03 x 1) = 1 warm-up step): lr 0, so the saved
    weights are the initial ones; the run says so before and after training. The saved weights are 0644
    like every other output (safetensors writes 0600)."""
    import torch
    from safetensors.torch import load_file

    from tiny import sft_rows

    data = write_jsonl(str(tmp_path / "sft.jsonl"), sft_rows(4))
    out = str(tmp_path / "o")
    flags = base_flags(tiny_dir, data, out, "--train.batch_size", "4", "--train.max_epochs", "1")
    flags[flags.index("--lr_warmup_ratio") + 1] = "0.03"
    last, printed = _sft(flags, capsys)
    assert last["lr"] == 0.0
    assert "warning: every optimizer step left to this run (1) falls in the learning-rate warm-up at lr 0" in printed
    assert "note: all 1 optimizer steps of this run had lr 0 (learning-rate warm-up)" in printed
    before, after = (
        load_file(os.path.join(tiny_dir, "model.safetensors")),
        load_file(os.path.join(out, "model.safetensors")),
    )
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl"):
        assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == 0o666 & ~mask, name


# ---- 7. distill sections the plan does not use -------------------------------------------------------------------


def test_distill_checks_sections_it_will_not_use_and_says_so(tiny_dir, tiny_talking_teacher, tmp_path):
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import run_distill
    from openrlhf.pipeline.plan import plan_distill

    bad = _distill_yaml(
        tmp_path,
        tiny_talking_teacher,
        tiny_dir,
        cache_logps=False,
        score={"train.micro_batch_sise": 4},
        prune={"mlp_ration": 0.5},
    )
    with pytest.raises(ConfigError) as e:
        run_distill(load_distill_config(bad))
    problems = e.value.problems
    assert any(
        p.startswith("score (a section this plan does not use: cache_logps is false")
        and "--train.micro_batch_sise" in p
        for p in problems
    ), problems
    assert any(
        p.startswith("student.prune (a section this plan does not use: student.model_name_or_path is given")
        and "--prune.mlp_ration" in p
        for p in problems
    ), problems
    assert not os.path.exists(str(tmp_path / "run"))

    good = _distill_yaml(
        tmp_path, tiny_talking_teacher, tiny_dir, cache_logps=False, score={"train.micro_batch_size": 4}
    )
    said = []
    run_distill(load_distill_config(good), log=said.append, stop_after="prompts")
    assert (
        "[distill] note: the score: section is not used by this plan (cache_logps is false: daDPO scores the "
        "teacher and the reference online); its flags were checked"
    ) in said, said
    # With cache_logps the same section is a stage, and no note.
    used = _distill_yaml(
        tmp_path, tiny_talking_teacher, tiny_dir, cache_logps=True, score={"train.micro_batch_size": 4}
    )
    assert plan_distill(load_distill_config(used)).unused == {}


# ---- Ctrl-C in generate, score_logps and judge: one line saying that the same command resumes ------------------


def _interrupt_when(cmd, ready, timeout=240):
    """Start ``cmd``, send SIGINT once ``ready()`` holds; (return code, stderr)."""
    import signal
    import subprocess
    import sys
    import time

    from tiny import REPO, launch_env, sigint_default

    proc = subprocess.Popen(
        [sys.executable, "-m", *cmd],
        env=launch_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def _lines(path):
    return len(open(path).read().splitlines()) if os.path.exists(path) else 0


def _one_interrupted_line(rc, stderr, *parts):
    assert rc == 130, stderr[-3000:]
    # split on "\n" only: a message glued to a progress bar (its "\r" redraws) would not start a line
    lines = [x for x in stderr.split("\n") if "interrupted" in x]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), stderr[-3000:]
    assert "rerun the same command to resume" in lines[0] and all(p in lines[0] for p in parts), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.main_leg
def test_ctrl_c_in_score_logps_says_the_same_command_resumes(tiny_dir, tiny_teacher_other_family, tmp_path):
    rows = pref_rows(8) * 6
    for i, r in enumerate(rows):
        r["prompt"] = f"{r['prompt']} ({i})"
    data = write_jsonl(str(tmp_path / "pairs.jsonl"), rows)
    out = str(tmp_path / "scored")
    flags = score_flags(tiny_dir, data, out, "--teacher.model_name_or_path", tiny_teacher_other_family)
    partial = os.path.join(out, ".score_partial", "teacher.rank0.jsonl")
    rc, err = _interrupt_when(["openrlhf.cli.score_logps", *flags], lambda: _lines(partial) >= 3)
    _one_interrupted_line(rc, err, f"the pairs scored so far are kept in {os.path.join(out, '.score_partial')}")
    res = run_module("openrlhf.cli.score_logps", flags, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(open(os.path.join(out, "train.jsonl")).read().splitlines()) == 48


@pytest.mark.main_leg
def test_ctrl_c_in_generate_says_the_same_command_resumes(tiny_dir, tmp_path):
    prompts = write_jsonl(
        str(tmp_path / "prompts.jsonl"), [{"id": i, "prompt": f"Tell me about the number {i}."} for i in range(40)]
    )
    out = str(tmp_path / "gen.jsonl")
    flags = [
        "--model.model_name_or_path",
        tiny_dir,
        "--data.dataset",
        prompts,
        "--data.prompt_key",
        "prompt",
        "--data.apply_chat_template",
        "--generate.batch_size",
        "1",
        "--generate.max_new_tokens",
        "24",
        "--ds.param_dtype",
        "fp32",
        "--generate.output_path",
        out,
    ]
    rc, err = _interrupt_when(["openrlhf.cli.generate", *flags], lambda: _lines(out) >= 2)
    line = _one_interrupted_line(rc, err, f"of 40 prompts are answered in {out}")
    done = int(line.split("interrupted: ")[1].split(" of ")[0])
    assert 2 <= done < 40 and _lines(out) == done


@pytest.mark.main_leg
def test_ctrl_c_in_judge_says_the_same_command_resumes_and_loses_no_verdict(tmp_path):
    pytest.importorskip("openai")
    import time

    from judge_server import FakeJudge

    teacher, cand = _judge_files(tmp_path)
    more = write_jsonl(
        str(tmp_path / "more.jsonl"),
        [{"id": i, "prompt": f"Tell me a story {i}.", "response": "x" * i, "finish_reason": "stop"} for i in range(3)],
    )

    def slow(messages):
        time.sleep(0.4)
        return "OK" if "Say OK" in messages[-1]["content"] else "[[A]]"

    out = str(tmp_path / "j")
    cache = os.path.join(out, "judge_cache.jsonl")
    with FakeJudge(slow) as server:
        flags = [
            "--judge.base_url",
            server.url,
            "--judge.model",
            "fake-judge",
            "--judge.concurrency",
            "2",
            "--output_dir",
            out,
            "--task",
            "indomain",
            "--teacher_responses",
            teacher,
            "--candidate",
            f"long={cand}",
            "--candidate",
            f"more={more}",
        ]
        rc, err = _interrupt_when(["openrlhf.cli.judge", *flags], lambda: _lines(cache) >= 2)
        _one_interrupted_line(
            rc,
            err,
            f"every verdict received so far is kept in {cache}",
            "requests in flight at the interrupt are sent again",
        )
        kept = _lines(cache)
        assert 2 <= kept < 12
        res = run_module("openrlhf.cli.judge", flags, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    keys = [json.loads(x)["key"] for x in open(cache)]
    assert len(keys) == len(set(keys)) == 12  # 2 models x 3 items x 2 orders: none lost, none twice
