"""python -m openrlhf.cli.generate: prompts, greedy determinism, resuming, stop/length (the vLLM backend: test_vllm.py)."""

import json
import os
import sys

import pytest

from openrlhf.config.parse import ConfigError, load_config
from openrlhf.datasets.loading import DataError

from tiny import write_jsonl

PROMPTS = [
    {"id": "q1", "prompt": "What is the capital of France?"},
    {"id": "q2", "prompt": "Write a short poem about the sea."},
    {"id": "q3", "prompt": [{"role": "user", "content": "Hello, how are you today?"}]},
    {"id": "q4", "prompt": "Count to five, please, slowly and one number per line."},
    {"id": "q5", "prompt": "Say something about a fox."},
    {"id": "q6", "prompt": "What is distillation?"},
]


def make_cfg(model, dataset, output, *extra):
    argv = [
        "--model.model_name_or_path",
        model,
        "--data.dataset",
        dataset,
        "--generate.output_path",
        output,
        "--data.apply_chat_template",
        "--ds.param_dtype",
        "fp32",
        "--generate.max_new_tokens",
        "8",
        "--generate.batch_size",
        "4",
        *extra,
    ]
    return load_config(argv, task="generate")


def run(cfg):
    from openrlhf.recipes.generate import generate

    return generate(cfg, log=lambda *a: None)


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture()
def prompts_jsonl(tmp_path):
    return write_jsonl(str(tmp_path / "prompts.jsonl"), PROMPTS)


def direct_generate(model_dir, prompt, max_new_tokens):
    """The same prompt through plain transformers (no batching, no padding)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    gen = out[0, ids["input_ids"].shape[1] :].tolist()
    if tok.eos_token_id in gen:
        gen = gen[: gen.index(tok.eos_token_id)]
    return tok.decode(gen, skip_special_tokens=True)


def test_greedy_is_deterministic_and_matches_transformers(tiny_dir, prompts_jsonl, tmp_path):
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    stats = run(make_cfg(tiny_dir, prompts_jsonl, a))
    run(make_cfg(tiny_dir, prompts_jsonl, b, "--generate.batch_size", "1"))
    ra, rb = read(a), read(b)
    assert stats["generated"] == len(PROMPTS) and stats["new_tokens"] > 0 and stats["tokens_per_s"] > 0
    # Written in prompt-file order, whatever the length-sorted batching did.
    assert [r["id"] for r in ra] == [p["id"] for p in PROMPTS]
    assert [r["response"] for r in ra] == [r["response"] for r in rb]  # batched (left-padded) == one by one
    for row, p in zip(ra, PROMPTS, strict=True):
        assert row["prompt"] == p["prompt"]  # kept as given (string or messages)
        assert row["model"] == tiny_dir
        assert set(row) == {"id", "prompt", "response", "model", "finish_reason", "response_tokens"}
    for row in ra[:3]:
        assert row["response"] == direct_generate(tiny_dir, row["prompt"], 8)


def test_resume_after_interruption_and_torn_line(tiny_dir, prompts_jsonl, tmp_path):
    out = str(tmp_path / "gen.jsonl")
    first = run(make_cfg(tiny_dir, prompts_jsonl, out, "--data.max_samples", "3"))
    assert first["generated"] == 3
    partial = read(out)
    assert [r["id"] for r in partial] == ["q1", "q2", "q3"]

    second = run(make_cfg(tiny_dir, prompts_jsonl, out))
    assert second["already_done"] == 3 and second["generated"] == 3
    full = read(out)
    assert [r["id"] for r in full] == [p["id"] for p in PROMPTS]
    assert full[:3] == partial  # finished rows untouched

    # A kill in the middle of a write leaves a torn last line: it is dropped and regenerated.
    with open(out, "rb") as f:
        data = f.read()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    with open(out, "wb") as f:
        f.write(data[: last_start + 25])
    third = run(make_cfg(tiny_dir, prompts_jsonl, out))
    assert third["torn_line_dropped"] is True
    assert third["already_done"] == 5 and third["generated"] == 1
    assert read(out) == full  # nothing lost, nothing duplicated, same greedy text

    # Nothing left to do: a rerun generates nothing and keeps the file.
    fourth = run(make_cfg(tiny_dir, prompts_jsonl, out))
    assert fourth["generated"] == 0 and read(out) == full


def test_finish_reason_length_when_max_new_tokens_is_tiny(tiny_dir, prompts_jsonl, tmp_path):
    out = str(tmp_path / "gen.jsonl")
    stats = run(make_cfg(tiny_dir, prompts_jsonl, out, "--generate.max_new_tokens", "2"))
    rows = read(out)
    assert stats["finish_length"] == len(PROMPTS)
    assert all(r["finish_reason"] == "length" and r["response_tokens"] == 2 for r in rows)


@pytest.fixture(scope="module")
def always_eos_dir(tmp_path_factory, tiny_dir):
    """The tiny model rewired so that greedy decoding emits <|im_end|> at once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0  # hidden[0] > 0 after the final norm
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_token_id, 0] = 10.0
    folder = str(tmp_path_factory.mktemp("always_eos"))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_finish_reason_stop_on_end_of_turn(always_eos_dir, prompts_jsonl, tmp_path):
    out = str(tmp_path / "gen.jsonl")
    stats = run(make_cfg(always_eos_dir, prompts_jsonl, out))
    rows = read(out)
    assert stats["finish_stop"] == len(PROMPTS)
    assert all(r["finish_reason"] == "stop" and r["response"] == "" and r["response_tokens"] == 1 for r in rows)


def test_trim_response():
    from openrlhf.generation.outputs import trim_response

    assert trim_response([5, 6, 2, 0, 0], [2]) == ([5, 6], 3, "stop")
    assert trim_response([5, 6, 7], [2, 9]) == ([5, 6, 7], 3, "length")
    assert trim_response([5, 9, 2], [2, 9]) == ([5], 2, "stop")  # the first stop id wins
    assert trim_response([5, 6], [2], backend_finish="stop") == ([5, 6], 2, "stop")


def test_stop_ids_add_end_of_turn_and_generation_config(tiny_dir):
    from transformers import AutoTokenizer

    from openrlhf.generation.prompts import stop_token_ids

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    tok.eos_token = "<|endoftext|>"  # a base-model EOS that differs from the end-of-turn token
    assert stop_token_ids(tok, use_chat_template=True) == [endoftext, im_end]
    assert stop_token_ids(tok, use_chat_template=False) == [endoftext]
    assert stop_token_ids(tok, use_chat_template=True, generation_eos=[7, endoftext]) == [7, endoftext, im_end]


def test_malformed_rows_are_reported_with_line_numbers_before_loading(tiny_dir, tmp_path, monkeypatch):
    import openrlhf.generation.hf_backend as hf

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(hf.HFGenerator, "__init__", no_model)
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "prompt": "fine"}),
                json.dumps({"id": "b", "question": "no prompt key"}),
                "",
                json.dumps({"id": "c", "prompt": "   "}),
                json.dumps({"id": "d", "prompt": 42}),
                json.dumps({"id": "a", "prompt": "again"}),
                json.dumps({"id": "e", "conversations": [{"from": "gpt", "value": "no human"}]}),
            ]
        )
        + "\n"
    )
    with pytest.raises(DataError) as e:
        run(make_cfg(tiny_dir, str(path), str(tmp_path / "out.jsonl")))
    msg = str(e.value)
    assert str(path) in msg and "5 problem(s)" in msg
    assert "line 2: missing key 'prompt'" in msg
    assert "line 4: key 'prompt' is an empty prompt" in msg  # line numbers count the blank line
    assert "line 5: key 'prompt' is a int" in msg
    assert "line 6: duplicate id 'a' (first on line 1)" in msg
    assert not (tmp_path / "out.jsonl").exists()


def test_sharegpt_rows_use_the_first_human_turn_and_index_ids(tiny_dir, tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Name a colour."},
                {"from": "gpt", "value": "Blue."},
                {"from": "human", "value": "Another?"},
            ]
        },
        {"conversations": [{"from": "human", "value": "Say hi."}]},
    ]
    data = write_jsonl(str(tmp_path / "sharegpt.jsonl"), rows)
    out = str(tmp_path / "gen.jsonl")
    run(make_cfg(tiny_dir, data, out, "--generate.max_new_tokens", "2"))
    got = read(out)
    assert [(r["id"], r["prompt"]) for r in got] == [(0, "Name a colour."), (1, "Say hi.")]


def test_rows_of_another_model_are_refused(tiny_dir, prompts_jsonl, tmp_path):
    out = tmp_path / "gen.jsonl"
    out.write_text(json.dumps({"id": "q1", "prompt": "x", "response": "y", "model": "/other/model"}) + "\n")
    with pytest.raises(DataError, match="another output path"):
        run(make_cfg(tiny_dir, prompts_jsonl, str(out)))


def test_an_id_answered_for_another_prompt_is_refused(tiny_dir, prompts_jsonl, tmp_path):
    out = str(tmp_path / "gen.jsonl")
    run(make_cfg(tiny_dir, prompts_jsonl, out, "--data.max_samples", "2"))
    other = write_jsonl(str(tmp_path / "other.jsonl"), [{"id": "q2", "prompt": "Something else entirely."}])
    with pytest.raises(DataError, match=r"already answers 1 of these ids with another prompt .*: id 'q2'"):
        run(make_cfg(tiny_dir, other, out))


def test_generate_config_is_validated(tiny_dir, prompts_jsonl):
    argv = [
        "--model.model_name_or_path",
        tiny_dir,
        "--data.dataset",
        prompts_jsonl,
        "--generate.backend",
        "tgi",
        "--generate.max_new_tokens",
        "0",
        "--generate.temperature",
        "-1",
        "--generate.top_p",
        "0",
        "--generate.top_k",
        "0",
        "--generate.batch_size",
        "0",
        "--vllm.tensor_parallel_size",
        "0",
        "--vllm.num_engines",
        "0",
        "--vllm.gpu_memory_utilization",
        "1.5",
    ]
    with pytest.raises(ConfigError) as e:
        load_config(argv, task="generate")
    flags = {p.split(":")[0] for p in e.value.problems}
    assert flags == {
        "--generate.backend",
        "--generate.output_path",
        "--generate.max_new_tokens",
        "--generate.temperature",
        "--generate.top_p",
        "--generate.top_k",
        "--generate.batch_size",
        "--vllm.tensor_parallel_size",
        "--vllm.num_engines",
        "--vllm.gpu_memory_utilization",
    }
    # The names of earlier versions point to the new ones.
    with pytest.raises(ConfigError) as e:
        load_config(argv[:4] + ["--generate.tp_size", "2", "--generate.num_engines", "2"], task="generate")
    assert any("did you mean --vllm.tensor_parallel_size" in p for p in e.value.problems)
    assert any("did you mean --vllm.num_engines" in p for p in e.value.problems)


def test_vllm_settings_name_the_executor_and_skip_detokenizing():
    """What ``vllm.LLM`` / ``vllm.SamplingParams`` get. A Ray-placed engine holds one bundle of tp GPUs;
    vLLM 0.32's Ray executor refuses such a bundle ("Placement group bundle cannot have more than 1 GPU"),
    so the executor is named: ``mp`` (tp worker processes inside the engine's actor) for tp > 1, ``uni``
    for one device. Output text is never used: no detokenizing."""
    from openrlhf.generation.ray_engines import engine_gpus
    from openrlhf.generation.vllm_backend import VLLMSettings, llm_kwargs, sampling_kwargs

    for tp, backend in ((1, "uni"), (2, "mp"), (4, "mp")):
        s = VLLMSettings(
            model="m",
            tp_size=tp,
            dtype="bfloat16",
            gpu_memory_utilization=0.5,
            seed=3,
            temperature=0.0,
            top_p=1.0,
            top_k=-1,
            max_tokens=4,
            batch_size=2,
            stop_ids=[7, 8],
        )
        assert llm_kwargs(s) == {
            "model": "m",
            "tensor_parallel_size": tp,
            "dtype": "bfloat16",
            "gpu_memory_utilization": 0.5,
            "seed": 3,
            "enforce_eager": False,
            "max_model_len": None,
            "distributed_executor_backend": backend,
        }
        assert sampling_kwargs(s) == {
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": -1,
            "max_tokens": 4,
            "stop_token_ids": [7, 8],
            "detokenize": False,
        }
        # one bundle (one node, one actor) of all tp GPUs per vLLM engine; one GPU per hf engine; none on CPUs
        assert engine_gpus("vllm", tp, True) == tp and engine_gpus("hf", tp, True) == 1
        assert engine_gpus("vllm", tp, False) == 0


def test_package_import_is_light():
    import subprocess

    code = (
        "import sys, openrlhf.generation, openrlhf.cli.generate; "
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'deepspeed') if m in sys.modules]; "
        "assert not heavy, heavy; "
        "import openrlhf.generation.vllm_backend; "  # vllm (optional) is imported by the engine, not the module
        "heavy = [m for m in ('vllm', 'deepspeed') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_sampling_is_reproducible_by_seed(tiny_dir, prompts_jsonl, tmp_path):
    def sample(name, seed):
        out = str(tmp_path / name)
        run(
            make_cfg(
                tiny_dir,
                prompts_jsonl,
                out,
                "--generate.temperature",
                "1.0",
                "--generate.top_k",
                "50",
                "--generate.top_p",
                "0.95",
                "--train.seed",
                str(seed),
                "--generate.max_new_tokens",
                "16",
            )
        )
        return [r["response"] for r in read(out)]

    a, b, c = sample("a.jsonl", 1), sample("b.jsonl", 1), sample("c.jsonl", 2)
    assert a == b and a != c
