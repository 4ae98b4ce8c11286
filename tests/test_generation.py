"""python -m openrlhf.cli.generate: prompts, greedy determinism, resuming, stop/length (the vLLM backend: test_vllm.py)."""

import dataclasses
import json
import os
import sys

import pytest

from openrlhf.config.parse import ConfigError, load_config
from openrlhf.datasets.loading import DataError
from openrlhf.utils.errors import Interrupted

from tiny import as_flags, write_jsonl

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
        *as_flags(
            {
                "model.model_name_or_path": model,
                "data.dataset": dataset,
                "generate.output_path": output,
                "data.apply_chat_template": None,
                "ds.param_dtype": "fp32",
                "generate.max_new_tokens": "8",
                "generate.batch_size": "4",
            }
        ),
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


def test_a_file_of_both_prompt_kinds_or_multi_turn_without_a_template_is_refused(tiny_dir, tmp_path, monkeypatch):
    """Multi-turn rows (``turns``) and single prompts in one file, or multi-turn rows without
    --data.apply_chat_template: one DataError each, before a model loads."""
    import openrlhf.generation.hf_backend as hf

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(hf.HFGenerator, "__init__", no_model)
    turns = {"id": "t1", "turns": ["Hello.", "And then?"]}
    mixed = write_jsonl(str(tmp_path / "mixed.jsonl"), [turns, PROMPTS[0]])
    with pytest.raises(DataError, match=r"1 rows are multi-turn \('turns'\) and 1 are not; use one kind per file"):
        run(make_cfg(tiny_dir, mixed, str(tmp_path / "out.jsonl")))
    multi = write_jsonl(str(tmp_path / "multi.jsonl"), [turns])
    cfg = make_cfg(tiny_dir, multi, str(tmp_path / "out.jsonl"))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, apply_chat_template=False))
    with pytest.raises(DataError, match=r"multi-turn prompts \('turns'\) need --data.apply_chat_template"):
        run(cfg)
    assert not (tmp_path / "out.jsonl").exists()


def test_rows_of_other_ids_stay_after_the_prompts_in_prompt_order(tiny_dir, prompts_jsonl, tmp_path):
    """An output file holding a row of an id that is not in the prompt file: the finished file has the
    prompts' rows in prompt-file order, then that row; the stats and a note line count it."""
    out = str(tmp_path / "gen.jsonl")
    run(make_cfg(tiny_dir, prompts_jsonl, out, "--data.max_samples", "2"))
    done = read(out)
    extra = dict(done[0], id="zz", prompt="Not in the prompt file.")
    write_jsonl(out, [done[1], extra, done[0]])
    lines = []
    from openrlhf.recipes.generate import generate

    stats = generate(make_cfg(tiny_dir, prompts_jsonl, out), log=lines.append)
    assert [r["id"] for r in read(out)] == [p["id"] for p in PROMPTS] + ["zz"]
    assert read(out)[-1] == extra and read(out)[:2] == done
    assert (stats["rows_in_output"], stats["other_rows_in_output"], stats["already_done"]) == (7, 1, 2)
    assert lines[-1] == f"generate: note: 1 rows of {out} have ids that are not in {prompts_jsonl}"


def test_a_backend_that_skips_a_prompt_is_an_error(tiny_dir, prompts_jsonl, tmp_path, monkeypatch):
    import openrlhf.generation.hf_backend as hf

    real = hf.HFGenerator.run

    def skipping(self, prompts, sampling):
        for batch in real(self, prompts, sampling):
            yield [res for res in batch if res[0] != 1]  # never the second prompt

    monkeypatch.setattr(hf.HFGenerator, "run", skipping)
    out = str(tmp_path / "gen.jsonl")
    with pytest.raises(RuntimeError, match=r"generate: the hf backend returned no response for ids \['q2'\]"):
        run(make_cfg(tiny_dir, prompts_jsonl, out))
    assert sorted(r["id"] for r in read(out)) == ["q1", "q3", "q4", "q5", "q6"]  # the answers are kept


def test_an_interrupted_multi_turn_run_says_rows_are_written_when_every_turn_is_answered(
    tiny_dir, tmp_path, monkeypatch
):
    import openrlhf.generation.hf_backend as hf

    def interrupted(self, prompts, sampling):
        raise KeyboardInterrupt
        yield  # a generator, as the real one

    closed = []
    real_close = hf.HFGenerator.close
    monkeypatch.setattr(hf.HFGenerator, "run", interrupted)
    monkeypatch.setattr(hf.HFGenerator, "close", lambda self: (closed.append(True), real_close(self)))
    rows = [{"id": "t1", "turns": ["Hello.", "And then?"]}, {"id": "t2", "turns": ["Name a colour."]}]
    out = str(tmp_path / "gen.jsonl")
    with pytest.raises(Interrupted) as e:
        run(make_cfg(tiny_dir, write_jsonl(str(tmp_path / "multi.jsonl"), rows), out))
    assert str(e.value) == (
        f"0 of 2 multi-turn prompts (a row is written when all its turns are answered) are answered in {out}; "
        "rerun the same command to resume (only the missing ones are generated)"
    )
    assert e.value.__suppress_context__ and closed == [True]


def test_generate_config_is_validated(tiny_dir, prompts_jsonl):
    argv = as_flags(
        {
            "model.model_name_or_path": tiny_dir,
            "data.dataset": prompts_jsonl,
            "generate.backend": "tgi",
            "generate.max_new_tokens": "0",
            "generate.temperature": "-1",
            "generate.top_p": "0",
            "generate.top_k": "0",
            "generate.batch_size": "0",
            "vllm.tensor_parallel_size": "0",
            "vllm.num_engines": "0",
            "vllm.gpu_memory_utilization": "1.5",
        }
    )
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
    from openrlhf.generation.sampling import Sampling
    from openrlhf.generation.vllm_backend import VLLMSettings, llm_kwargs, sampling_kwargs

    own = {"temperature": 0.7, "max_tokens": 9, "seed": 123}
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
            "seed": None,  # the engine's stream (seeded with --train.seed)
            "stop_token_ids": [7, 8],
            "detokenize": False,
        }
        # a prompt's own settings: its temperature, max_new_tokens and seed; top_p / top_k / stops the run's
        assert sampling_kwargs(s, Sampling(0.7, 9, 123)) == {**sampling_kwargs(s), **own}
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
                *as_flags(
                    {
                        "generate.temperature": "1.0",
                        "generate.top_k": "50",
                        "generate.top_p": "0.95",
                        "train.seed": str(seed),
                        "generate.max_new_tokens": "16",
                    }
                ),
            )
        )
        return [r["response"] for r in read(out)]

    a, b, c = sample("a.jsonl", 1), sample("b.jsonl", 1), sample("c.jsonl", 2)
    assert a == b and a != c


# ---- rows of several settings: one model load, one engine per run ---------------------------------------------

MIXED = [  # (temperature, max_new_tokens) of each row, as the MT-Bench prompt files carry them by category
    (0.0, 6),
    (1.0, 8),
    (0.0, 3),
    (1.0, 8),
    (0.0, 6),
    (0.5, 8),
]


def mixed_rows(ids=None):
    ids = range(len(PROMPTS)) if ids is None else ids
    return [{**PROMPTS[i], "temperature": MIXED[i][0], "max_new_tokens": MIXED[i][1]} for i in ids]


def test_hf_loads_the_model_once_for_every_setting_and_answers_as_each_setting_alone(tiny_dir, tmp_path, monkeypatch):
    """Rows of four settings (greedy and sampled, several max_new_tokens): one model load, and every row
    answered exactly as a run of its setting alone answers it (the random stream seeded per setting)."""
    import openrlhf.generation.hf_backend as hf

    loads = []

    class Counting:
        @staticmethod
        def from_pretrained(*a, **k):
            loads.append(a[0])
            return hf_auto.from_pretrained(*a, **k)

    hf_auto = hf.AutoModelForCausalLM
    monkeypatch.setattr(hf, "AutoModelForCausalLM", Counting)
    mixed = str(tmp_path / "mixed.jsonl")
    stats = run(make_cfg(tiny_dir, write_jsonl(str(tmp_path / "m.jsonl"), mixed_rows()), mixed, "--train.seed", "3"))
    assert len(loads) == 1 and stats["generated"] == len(PROMPTS)
    got = {r["id"]: r for r in read(mixed)}
    assert [r["response_tokens"] for r in got.values()] == [m for _, m in MIXED]  # the tiny model never stops

    for setting in dict.fromkeys(MIXED):
        ids = [i for i, s in enumerate(MIXED) if s == setting]
        name = f"{setting[0]}_{setting[1]}"
        alone, rows = str(tmp_path / f"alone_{name}.jsonl"), str(tmp_path / f"rows_{name}.jsonl")
        run(make_cfg(tiny_dir, write_jsonl(rows, mixed_rows(ids)), alone, "--train.seed", "3"))
        for r in read(alone):
            assert r == got[r["id"]], (setting, r["id"])


# A stand-in for the vllm package (the main leg has none): its LLM logs each construction and each generate
# call (to $FAKE_VLLM_LOG, from any process) and answers with tokens that depend on the prompt, the temperature
# and the seed, so the test sees which settings each prompt got and which engine starts happened.
FAKE_VLLM = """
import json, os


class SamplingParams:
    def __init__(self, **kw):
        self.kw = kw


class _Seq:
    def __init__(self, token_ids, finish_reason):
        self.token_ids, self.finish_reason = token_ids, finish_reason


class _Out:
    def __init__(self, seq):
        self.outputs = [seq]


def _log(**event):
    with open(os.environ["FAKE_VLLM_LOG"], "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **event}) + "\\n")


class LLM:
    def __init__(self, **kw):
        _log(event="init", model=kw["model"])

    def generate(self, prompts, params, use_tqdm=True):
        if not isinstance(params, list):  # one for all prompts, as vLLM takes it too
            params = [params] * len(prompts)
        _log(event="generate", params=[p.kw for p in params], prompts=[p["prompt_token_ids"] for p in prompts])
        outs = []
        for p, sp in zip(prompts, params):
            kw, ids = sp.kw, p["prompt_token_ids"]
            base = sum(ids) + int(kw["temperature"] * 100) + (kw.get("seed") or 0)
            n = min(kw["max_tokens"], 3)
            outs.append(_Out(_Seq([20 + (base + k) % 300 for k in range(n)], "length")))
        return outs
"""


@pytest.fixture()
def fake_vllm(tmp_path, monkeypatch):
    """The stand-in vllm importable here and in spawned engine processes (their sys.path is this one's);
    returns a function that reads its log. Any vllm imported before is put back afterwards."""
    pkg = tmp_path / "fake_vllm"
    (pkg / "vllm").mkdir(parents=True)
    (pkg / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    log = tmp_path / "fake_vllm.log"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.syspath_prepend(str(pkg))
    yield lambda: [json.loads(x) for x in open(log)] if log.exists() else []
    sys.modules.pop("vllm", None)


def mt_rows():
    """Multi-turn rows of three settings (MT-Bench's temperatures by category), one of them a single turn."""
    temps = [0.7, 0.0, 0.1, 0.7, 0.0, 0.1]
    return [
        {
            "id": 81 + i,
            "turns": [f"Question {i} about the sea.", f"And a follow-up {i}?"][: 1 if i == 4 else 2],
            "temperature": t,
            "max_new_tokens": 5,
        }
        for i, t in enumerate(temps)
    ]


def test_vllm_starts_one_engine_for_every_setting_and_turn(tiny_dir, fake_vllm, tmp_path):
    """MT-Bench-like rows (three temperatures, two turns): one engine, one ``LLM.generate`` per turn with a
    SamplingParams per prompt (its row's temperature; a sampled row's own seed, another one per turn);
    two engine processes start one engine each and answer the same."""
    from openrlhf.generation.sampling import row_seed

    rows = mt_rows()
    prompts = write_jsonl(str(tmp_path / "mt.jsonl"), rows)

    def cfg(out, *extra):
        return load_config(
            [
                *as_flags(
                    {
                        "model.model_name_or_path": tiny_dir,
                        "data.dataset": prompts,
                        "data.apply_chat_template": None,
                        "generate.output_path": out,
                        "generate.backend": "vllm",
                        "generate.batch_size": "16",
                        "train.seed": "5",
                    }
                ),
                *extra,
            ],
            task="generate",
            check_packages=False,
        )

    one = str(tmp_path / "one.jsonl")
    stats = run(cfg(one))
    events = fake_vllm()
    assert [e["event"] for e in events] == ["init", "generate", "generate"]  # one engine, one call per turn
    for turn, call in enumerate(events[1:]):
        todo = [r for r in rows if len(r["turns"]) > turn]
        assert [(p["temperature"], p["max_tokens"]) for p in call["params"]] == [(r["temperature"], 5) for r in todo]
        assert [p["seed"] for p in call["params"]] == [
            row_seed(5, r["id"], turn) if r["temperature"] > 0 else None for r in todo
        ]
    assert stats["generated"] == 6 and stats["new_tokens"] == 3 * 11
    answered = read(one)
    assert [len(r["responses"]) for r in answered] == [2, 2, 2, 2, 1, 2]
    assert answered[0]["responses"] != answered[3]["responses"]  # same template, own seeds

    two = str(tmp_path / "two.jsonl")
    open(os.environ["FAKE_VLLM_LOG"], "w").close()
    run(cfg(two, "--vllm.num_engines", "2"))
    events = fake_vllm()
    inits = [e for e in events if e["event"] == "init"]
    assert len(inits) == 2 and len({e["pid"] for e in inits}) == 2  # one engine per process, for both turns
    assert sum(len(e["prompts"]) for e in events if e["event"] == "generate") == 11
    assert read(two) == answered
