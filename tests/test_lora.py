"""LoRA and QLoRA (SFT / DPO / daDPO, ZeRO-3 with two processes), lora_combiner, and the GPU-only kernels
(4-bit weights, Liger) with their refusals on a CPU."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from openrlhf.utils.errors import UserError

from tiny import (
    as_flags,
    base_flags,
    pref_rows,
    replace_flags,
    run_deepspeed,
    run_in_process,
    train_losses,
    write_jsonl,
)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def check_lora_outputs(base: str, out: str):
    """The adapters in <out>/adapter, the merged weights in <out>: the merged model is the base with the
    adapters applied (peft's own loading), the weights LoRA does not touch are the base's, and training
    changed the model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out)
    init = AutoModelForCausalLM.from_pretrained(base)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), os.path.join(out, "adapter"))
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_logits(merged, ids), _logits(with_adapter, ids), atol=1e-5)
    assert not torch.allclose(_logits(merged, ids), _logits(init, ids), atol=1e-3)
    m, i = dict(merged.named_parameters()), dict(init.named_parameters())
    untouched = [n for n in m if "embed" in n or "norm" in n or "lm_head" in n]
    assert untouched and all(torch.equal(m[n], i[n]) for n in untouched)
    adapted = [n for n in m if n.endswith(("q_proj.weight", "down_proj.weight"))]
    assert adapted and all(not torch.equal(m[n], i[n]) for n in adapted)


def test_lora_dpo_reference_is_the_frozen_base(tiny_dir, tmp_path, capsys):
    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(16))
    out = str(tmp_path / "lora_dpo")
    run_in_process(
        "dpo",
        base_flags(
            tiny_dir,
            data,
            out,
            *as_flags(
                {
                    "train.batch_size": "8",
                    "train.micro_batch_size": "4",
                    "train.max_epochs": "4",
                    "model.beta": "0.5",
                    "adam.lr": "1e-2",
                    "ds.lora.rank": "8",
                    "ds.lora.alpha": "16",
                }
            ),
        ),
    )
    losses = train_losses(out)
    # Step 1: the policy (zero-initialised adapters) equals the reference (adapters off): log 2 exactly.
    assert losses[0] == pytest.approx(0.6931, abs=1e-4) and losses[-1] < losses[0] - 0.2
    assert "no second copy" in capsys.readouterr().out
    check_lora_outputs(tiny_dir, out)


def test_lora_sft_trains_only_adapters(tiny_dir, sft_jsonl, tmp_path):
    out = str(tmp_path / "lora_sft")
    run_in_process(
        "sft",
        base_flags(
            tiny_dir,
            sft_jsonl,
            out,
            *as_flags(
                {
                    "train.batch_size": "2",
                    "train.max_epochs": "4",
                    "adam.lr": "1e-2",
                    "ds.lora.rank": "4",
                    "ds.lora.target_modules": "q_proj",
                }
            ),
            "v_proj",
            "down_proj",
        ),
    )
    losses = train_losses(out)
    assert losses[-1] < losses[0]
    cfg = json.load(open(os.path.join(out, "adapter", "adapter_config.json")))
    assert sorted(cfg["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    check_lora_outputs(tiny_dir, out)


@pytest.mark.slow
def test_lora_dadpo_two_processes_zero3(tiny_dir, tiny_teacher_other_family, tmp_path):
    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(16))
    out = str(tmp_path / "lora_dadpo_z3")
    flags = base_flags(
        tiny_dir,
        data,
        out,
        *as_flags(
            {
                "teacher.model_name_or_path": tiny_teacher_other_family,
                "train.batch_size": "4",
                "train.max_epochs": "2",
                "model.beta": "0.5",
                "teacher.beta": "0.1",
                "adam.lr": "1e-2",
                "ds.lora.rank": "8",
            }
        ),
    )
    proc = run_deepspeed("openrlhf.cli.train_dadpo", replace_flags(flags, ds__zero_stage="3"))
    losses = train_losses(out)
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < losses[0]
    assert "no second copy" in proc.stdout
    check_lora_outputs(tiny_dir, out)


def test_qlora_final_save_dequantizes_the_4bit_base_and_writes_a_plain_folder(tmp_path):
    """QLoRA's final save: bitsandbytes keeps a 4-bit weight as packed uint8 [out*in/2, 1] plus quantisation
    entries; the merge adds B @ A to the dequantized weight and writes a plain HF folder (no quantisation
    entries, no quantization_config) whose logits are those of the 4-bit base with its adapters. Real
    bitsandbytes, which quantises on CPU too; the strategy's own save path (one process, ZeRO-2)."""
    pytest.importorskip("bitsandbytes")
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from openrlhf.config.schema import AdamConfig, DSConfig, LoRAConfig, TrainConfig
    from openrlhf.models.actor import apply_lora
    from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy

    from tiny import make_tiny

    # bitsandbytes' CPU kernels need input features >= its block size (64)
    tiny_dir = make_tiny(str(tmp_path / "base"), hidden=64)
    # what Actor.from_pretrained asks for with --ds.load_in_4bit (it refuses a machine without CUDA)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(
        tiny_dir, dtype=torch.float32, quantization_config=quant, device_map="cpu"
    )
    assert base.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8
    model = apply_lora(base, LoRAConfig(rank=4, alpha=8, target_modules=("all-linear",)))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # trained adapters (peft starts B at zero)
            p.data.normal_(0, 0.2)
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    expected = _logits(model, ids)
    with model.disable_adapter():
        without_adapters = _logits(model, ids)
    assert not torch.allclose(without_adapters, expected, atol=1e-2)  # the comparison below sees the merge

    strategy = DeepspeedStrategy(
        DSConfig(zero_stage=2, param_dtype="fp32"),
        TrainConfig(micro_batch_size=1, batch_size=1),
        max_norm=1.0,
        adam=AdamConfig(),
    )
    strategy.setup_distributed()
    try:
        out = str(tmp_path / "qlora")
        strategy.save_lora_model(model, AutoTokenizer.from_pretrained(tiny_dir), out, scaling=8 / 4)
    finally:
        strategy.finish()
    config = json.load(open(os.path.join(out, "config.json")))
    assert "quantization_config" not in config
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert not [k for k in keys if "absmax" in k or "quant" in k or "lora" in k or "base_layer" in k]
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.float32
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.model.layers[0].self_attn.q_proj.weight.shape == (64, 64)
    # each adapted weight: the 4-bit weight as bitsandbytes dequantizes it from the module + scaling * B @ A
    from bitsandbytes.functional import dequantize_4bit

    saved = dict(merged.named_parameters())
    checked = 0
    for name, module in model.named_modules():
        if hasattr(module, "base_layer") and hasattr(module.base_layer.weight, "quant_state"):
            w = module.base_layer.weight
            want = dequantize_4bit(w.data, w.quant_state).float() + 2.0 * (
                module.lora_B["default"].weight @ module.lora_A["default"].weight
            )
            got_w = saved[name.replace("base_model.model.", "") + ".weight"]
            assert torch.allclose(got_w, want, atol=1e-6), name
            checked += 1
    assert checked == 2 * 7  # every linear layer of both blocks
    # and the logits: bitsandbytes' CPU kernel computes in bf16, hence the tolerance (the adapters move
    # the logits ~10x more than that)
    got = _logits(merged, ids)
    assert (got - expected).abs().max() < 0.1 * (without_adapters - expected).abs().max()
    assert base.hf_quantizer is not None and "quantization_config" in base.config.to_dict()  # put back


def test_4bit_and_liger_need_a_gpu(tiny_dir, monkeypatch):
    """Without a CUDA GPU (a GPU machine is made to look like a CPU one, so this runs everywhere)."""
    from openrlhf.models.actor import Actor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--ds.load_in_4bit: .*CUDA GPU"):
        Actor.from_pretrained(tiny_dir, load_in_4bit=True)
    with pytest.raises(UserError, match="--ds.use_liger_kernel: .*CUDA GPU"):
        Actor.from_pretrained(tiny_dir, use_liger_kernel=True)


def _liger_modules(model) -> list:
    """Names of the modules of ``model`` that run a forward of liger_kernel's (their class's, or one bound
    to the instance)."""
    return [
        name
        for name, module in model.named_modules()
        if getattr(getattr(module.forward, "__func__", module.forward), "__module__", "").startswith("liger_kernel")
    ]


def test_liger_patches_the_trained_model_only(tiny_dir, monkeypatch):
    """--ds.use_liger_kernel patches the policy instance; a frozen model of the same family loaded after it
    (the reference / teacher of the training job) stays transformers' own, as in score_logps and in the Ray
    workers (which never patch), so its sentence log-probs are the same bits online and cached. Liger's
    kernels need Triton on CUDA: on a CPU the patch itself runs (it is made to believe in a GPU), and the test
    checks which forwards each instance runs and computes the frozen model's log-probs (plain torch)."""
    pytest.importorskip("liger_kernel.transformers")  # imported before torch is told of a GPU (bitsandbytes)
    from transformers.models.llama import modeling_llama

    from openrlhf.models.actor import Actor

    # whatever a patch rebinds is put back after this test, also when the code under test leaks it
    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", torch.nn.functional.cross_entropy)
    plain_rope = modeling_llama.apply_rotary_pos_emb
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (2, 12))
    attn = torch.ones_like(ids)
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, 7:] = 1

    def sentence_logps(actor):
        with torch.no_grad():
            return actor(ids, attn, loss_mask)[0].sum(-1)

    scored = sentence_logps(Actor.from_pretrained(tiny_dir))  # score_logps: nothing patched in that process
    with monkeypatch.context() as gpu:
        gpu.setattr(torch.cuda, "is_available", lambda: True)
        policy = Actor.from_pretrained(tiny_dir, use_liger_kernel=True)
    frozen = Actor.from_pretrained(tiny_dir)  # the training job's reference, loaded after the policy

    layers = len(policy.model.model.layers)
    patched = _liger_modules(policy.model)
    assert "" in patched and "model.norm" in patched  # Liger's forward and its RMSNorm on the policy
    assert sum(name.endswith(".mlp") for name in patched) == layers
    assert sum(name.endswith("layernorm") for name in patched) == 2 * layers
    assert _liger_modules(frozen.model) == []
    assert type(frozen.model.model.norm) is modeling_llama.LlamaRMSNorm
    assert modeling_llama.apply_rotary_pos_emb is plain_rope
    assert modeling_llama.LlamaRMSNorm.__module__ == modeling_llama.__name__
    assert torch.equal(sentence_logps(frozen), scored)


def test_class_level_liger_patches_are_kept_to_the_one_instance(tiny_dir, monkeypatch):
    """Some families' Liger patch replaces a class's forward, and with cross_entropy torch's own function,
    even when given an instance (llama4, internvl): run Liger's class-level Llama patch (model=None) inside
    patches_kept_to(policy): the policy keeps Liger's forward, bound to it; the class, the module's names and
    torch get theirs back, so a model built afterwards is transformers' own."""
    pytest.importorskip("liger_kernel.transformers")
    from liger_kernel.transformers import apply_liger_kernel_to_llama
    from liger_kernel.transformers.model.llama import lce_forward
    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    from openrlhf.models.actor import patches_kept_to

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    monkeypatch.setattr(modeling_llama.LlamaForCausalLM, "forward", modeling_llama.LlamaForCausalLM.forward)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", torch.nn.functional.cross_entropy)
    before = {n: getattr(modeling_llama, n) for n in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP")}
    plain_forward, plain_ce = modeling_llama.LlamaForCausalLM.forward, torch.nn.functional.cross_entropy
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with patches_kept_to(policy):
        apply_liger_kernel_to_llama()  # class-level: the forward, RMSNorm, MLP, RoPE
        assert modeling_llama.LlamaForCausalLM.forward is lce_forward
    with patches_kept_to(policy):
        apply_liger_kernel_to_llama(cross_entropy=True, fused_linear_cross_entropy=False)
        assert torch.nn.functional.cross_entropy is not plain_ce
    assert policy.forward.__func__ is lce_forward and policy.forward.__self__ is policy
    assert modeling_llama.LlamaForCausalLM.forward is plain_forward and torch.nn.functional.cross_entropy is plain_ce
    assert {n: getattr(modeling_llama, n) for n in before} == before
    later = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert _liger_modules(later) == [] and "forward" not in vars(later)


def test_liger_refuses_a_model_type_it_has_no_kernels_for(tiny_dir):
    pytest.importorskip("liger_kernel")
    from transformers import AutoModelForCausalLM

    from openrlhf.models.actor import apply_liger_kernels

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model.config.model_type = "no_such_family"
    with pytest.raises(UserError, match="--ds.use_liger_kernel: liger-kernel has no kernels for model type 'no_such"):
        apply_liger_kernels(model)
    assert _liger_modules(model) == []


@pytest.mark.gpu
def test_4bit_loads_the_base_weights_in_4_bits_on_a_gpu(tiny_dir):
    """On a CUDA machine with bitsandbytes: --ds.load_in_4bit loads every linear layer but the head as NF4."""
    import bitsandbytes as bnb

    from openrlhf.models.actor import Actor

    actor = Actor.from_pretrained(tiny_dir, dtype=torch.bfloat16, load_in_4bit=True)
    quantised = [name for name, m in actor.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    layers = actor.model.config.num_hidden_layers
    assert len(quantised) == 7 * layers  # q, k, v, o, gate, up, down per layer
    assert actor.model.get_parameter(quantised[0] + ".weight").quant_state.quant_type == "nf4"


@pytest.mark.main_leg
def test_lora_combiner_merged_folder_gives_peft_outputs(tiny_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny import run_module

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    adapter = str(tmp_path / "adapter")
    get_peft_model(base, cfg).save_pretrained(adapter)  # B != 0: the adapter changes the outputs
    out = str(tmp_path / "merged")
    res = run_module(
        "openrlhf.cli.lora_combiner",
        as_flags({"model_path": tiny_dir, "lora_path": adapter, "output_path": out, "ds.param_dtype": "fp32"}),
    )
    assert res.returncode == 0, res.stderr
    ids = torch.tensor([[5, 9, 13, 21, 34, 55, 2]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_dir)(input_ids=ids).logits
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), adapter)(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
    assert not torch.allclose(plain, want, atol=1e-3)
    assert torch.allclose(got, want, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(tiny_dir).chat_template
    # The default dtype is OpenRLHF's bf16; a folder that is not an adapter is one clear line.
    bad = run_module(
        "openrlhf.cli.lora_combiner",
        ["--model_path", tiny_dir, "--lora_path", tiny_dir, "--output_path", str(tmp_path / "x")],
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --lora_path:")


def test_lora_combiner_refuses_an_output_over_its_inputs_before_loading(tiny_dir, tmp_path, monkeypatch):
    """The output is the base folder, inside it, around the adapter, or a file: one line, nothing loaded."""
    import transformers

    from openrlhf.tools.lora_combine import combine_lora
    from openrlhf.utils.errors import UserError

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    for out, what in (
        (tiny_dir, "--model_path"),
        (os.path.join(tiny_dir, "merged"), "--model_path"),
        (str(tmp_path), "--lora_path"),
    ):
        with pytest.raises(UserError, match=f"--output_path {re.escape(out)}: it is {what}"):
            combine_lora(tiny_dir, str(adapter), out, "fp32")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--output_path: .*file is a file, expected a folder"):
        combine_lora(tiny_dir, str(adapter), str(tmp_path / "file"), "fp32")
    assert not os.path.exists(os.path.join(tiny_dir, "merged"))
