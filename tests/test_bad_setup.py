"""Bad runs found before work: every distill stage's bad flags at once, sections a plan will not use,
outputs that cannot be written, a Ray address without a cluster, a token budget smaller than a row, rows a
last global batch leaves out, a run all in warm-up."""

from __future__ import annotations

import os
import stat
import time

import pytest

from openrlhf.config import ConfigError, load_config
from openrlhf.utils.errors import UserError

from tiny import (
    base_flags,
    run_module,
    score_flags,
    sft_rows,
    small_distill_yaml,
    write_jsonl,
)


def test_distill_reports_the_bad_flags_of_every_stage_at_once(tmp_path):
    import yaml

    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.plan import plan_distill

    path = str(tmp_path / "d.yaml")
    yaml.safe_dump(
        {
            "run_dir": str(tmp_path / "run"),
            "teacher": "org/teacher",
            "student": {"model_name_or_path": "s"},
            "sft": {"train.batch_sise": 8},
            "dadpo": {"teacher.beta": -1},
            "ddpo": {"model.beta": 0},
            "common": {"prune.mlp_ratio": 0.1, "nope.x": 1},
        },
        open(path, "w"),
    )
    with pytest.raises(ConfigError) as e:
        plan_distill(load_distill_config(path))
    text = str(e.value)
    for part in (
        "dsft stage: --train.batch_sise: unknown flag",
        "dadpo stage: --teacher.beta: must be >= 0",
        "ddpo stage: --model.beta: must be > 0",
        "common: nope.x: no stage of this run takes it",
        # the student is given, so no prune stage runs here
        "common: prune.mlp_ratio: no stage of this run takes it",
    ):
        assert part in text, text
    assert not os.path.exists(tmp_path / "run")


def test_unwritable_outputs_are_found_before_anything_loads(tiny_dir, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    data = write_jsonl(str(tmp_path / "s.jsonl"), sft_rows(4))
    for task, flags, flag in [
        ("sft", base_flags(tiny_dir, data, str(a_file)), "--ckpt.output_dir"),
        ("sft", base_flags(tiny_dir, data, str(a_file / "sub")), "--ckpt.output_dir"),
        (
            "score_logps",
            score_flags(tiny_dir, data, str(a_file), "--teacher.model_name_or_path", tiny_dir),
            "--ckpt.output_dir",
        ),
        (
            "generate",
            ["--model.model_name_or_path", tiny_dir, "--data.dataset", data, "--generate.output_path", str(tmp_path)],
            "--generate.output_path",
        ),
        (
            "generate",
            [
                "--model.model_name_or_path",
                tiny_dir,
                "--data.dataset",
                data,
                "--generate.output_path",
                str(a_file / "out.jsonl"),
            ],
            "--generate.output_path",
        ),
    ]:
        with pytest.raises(ConfigError, match=rf"{flag}: .*(is a file|is a folder)"):
            load_config(flags, task)


@pytest.mark.main_leg
@pytest.mark.parametrize("address", ["127.0.0.1:{free}", "nowhere.invalid:6379"])
def test_ray_trainer_on_an_address_without_a_cluster_is_a_one_line_error(
    tiny_dir, tiny_teacher_other_family, pref_jsonl, tmp_path, address
):
    """It used to hang for ever (Ray's own retries); now exit 2 within seconds, naming the flag."""

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


def test_distill_checks_sections_it_will_not_use_and_says_so(tiny_dir, tiny_talking_teacher, tmp_path):
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import run_distill
    from openrlhf.pipeline.plan import plan_distill

    bad = small_distill_yaml(
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

    good = small_distill_yaml(
        tmp_path, tiny_talking_teacher, tiny_dir, cache_logps=False, score={"train.micro_batch_size": 4}
    )
    said = []
    run_distill(load_distill_config(good), log=said.append, stop_after="prompts")
    assert (
        "[distill] note: the score: section is not used by this plan (cache_logps is false: daDPO scores the "
        "teacher and the reference online); its flags were checked"
    ) in said, said
    # With cache_logps the same section is a stage, and no note.
    used = small_distill_yaml(
        tmp_path, tiny_talking_teacher, tiny_dir, cache_logps=True, score={"train.micro_batch_size": 4}
    )
    assert plan_distill(load_distill_config(used)).unused == {}
