"""OpenRLHF compatibility: the flag sets of upstream's example scripts, upstream's defaults, refused
features, LoRA (SFT / DPO / daDPO, ZeRO-3 with two processes), dataset mixing, multi-turn SFT,
pre-training mode, Anthropic-HH rows, and each compatibility flag reaching the code that uses it."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch

from openrlhf.config import ConfigError, load_config
from openrlhf.utils.errors import DataError, UserError

from tiny import base_flags, pref_rows, read_metrics, run_deepspeed, sft_rows, train_losses, write_jsonl
from tiny import run_in_process as run


def parse(flags, task):
    return load_config(flags, task, check_paths=False, check_packages=False)


def problems(flags, task):
    with pytest.raises(ConfigError) as e:
        parse(flags, task)
    return e.value.problems


def replace(flags, **values):
    """``flags`` with the value after each ``--<name>`` replaced (``ds__zero_stage="3"``)."""
    out = list(flags)
    for name, value in values.items():
        flag = "--" + name.replace("__", ".")
        out[out.index(flag) + 1] = value
    return out


# ---- upstream's example scripts: their flags, written out here (upstream OpenRLHF 0.11.0) ----------
# Each list is the script's `training_commands` after the module name, word for word as the v0.11.0 tag
# (commit 3c3be62) has it, no flag edited.

# examples/scripts/train_dpo_llama.sh
DPO_LLAMA = """--ckpt.output_dir ./checkpoint/llama3-8b-dpo --ckpt.save_steps -1 --logger.logging_steps 1
--eval.steps -1 --train.batch_size 256 --train.micro_batch_size 1
--model.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture --ds.param_dtype bf16 --train.max_epochs 1
--data.max_len 8192 --ds.zero_stage 3 --adam.lr 5e-7 --model.beta 0.1
--data.dataset OpenRLHF/preference_dataset_mixture2_and_safe_pku --data.apply_chat_template
--data.chosen_key chosen --data.rejected_key rejected --ds.attn_implementation flash_attention_2
--ckpt.load_enable --ds.packing_samples --model.gradient_checkpointing_enable""".split()

# examples/scripts/train_sft.sh
SFT_LLAMA = """--data.max_len 2048 --data.dataset Open-Orca/OpenOrca --data.input_key question
--data.output_key response --train.batch_size 256 --train.micro_batch_size 2 --data.max_samples 500000
--model.model_name_or_path meta-llama/Meta-Llama-3-8B --ckpt.output_dir ./checkpoint/llama3-8b-sft
--ckpt.save_steps -1 --logger.logging_steps 1 --eval.steps -1 --ds.zero_stage 2 --train.max_epochs 1
--ds.param_dtype bf16 --ds.attn_implementation flash_attention_2 --adam.lr 5e-6 --ckpt.load_enable
--ds.packing_samples --model.gradient_checkpointing_enable""".split()

# examples/scripts/train_sft_mixtral_lora.sh
SFT_MIXTRAL_LORA = """--data.max_len 2048 --data.dataset Open-Orca/OpenOrca --data.input_key question
--data.output_key response --train.batch_size 128 --train.micro_batch_size 4 --data.max_samples 500000
--model.model_name_or_path mistralai/Mixtral-8x7B-v0.1 --ckpt.output_dir ./checkpoint/mixtral-sft-lora
--ckpt.save_steps -1 --logger.logging_steps 1 --eval.steps -1 --ds.zero_stage 3 --train.max_epochs 1
--ds.param_dtype bf16 --model.gradient_checkpointing_enable --ds.attn_implementation flash_attention_2
--adam.lr 5e-6 --ds.lora.rank 64 --ds.lora.alpha 64 --ds.packing_samples --model.aux_loss_coef 0.001""".split()


def test_upstream_dpo_script_flags_mean_what_they_mean_upstream():
    cfg = parse(DPO_LLAMA, "dpo")
    assert (cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.max_epochs) == (256, 1, 1)
    assert (cfg.data.max_len, cfg.ds.zero_stage, cfg.ds.param_dtype, cfg.adam.lr) == (8192, 3, "bf16", 5e-7)
    assert cfg.model.beta == 0.1 and cfg.data.apply_chat_template and cfg.ckpt.load_enable
    assert cfg.ds.attn_implementation == "flash_attention_2" and cfg.ds.packing_samples
    assert cfg.model.gradient_checkpointing_enable and cfg.ckpt.save_steps == -1 and cfg.eval.steps == -1
    # What the script leaves to the defaults, as upstream: no prompt column (chosen / rejected carry the
    # conversation), the reference is the policy's initial weights.
    assert cfg.data.prompt_key == "" and cfg.ref.model_name_or_path == ""
    assert (cfg.data.chosen_key, cfg.data.rejected_key) == ("chosen", "rejected")
    assert any(
        "--model.beta" in p for p in problems(replace(DPO_LLAMA, model__beta="x")[:-1] + ["--beta", "0.1"], "dpo")
    )


def test_upstream_sft_script_flags_mean_what_they_mean_upstream():
    cfg = parse(SFT_LLAMA, "sft")
    assert (cfg.data.input_key, cfg.data.output_key, cfg.data.max_samples) == ("question", "response", 500000)
    assert (cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.max_epochs) == (256, 2, 1)
    assert (cfg.ds.zero_stage, cfg.adam.lr, cfg.ds.packing_samples) == (2, 5e-6, True)
    # No template given: upstream's default prompt format applies.
    assert cfg.data.input_template == "User: {}\nAssistant: " and not cfg.data.apply_chat_template


def test_upstream_mixtral_lora_script_flags_mean_what_they_mean_upstream():
    cfg = parse(SFT_MIXTRAL_LORA, "sft")
    assert (cfg.ds.lora.rank, cfg.ds.lora.alpha, cfg.ds.lora.dropout) == (64, 64, 0.0)
    assert cfg.ds.lora.target_modules == ("all-linear",)
    assert cfg.model.aux_loss_coef == 0.001 and cfg.ds.zero_stage == 3 and cfg.ds.packing_samples


def test_upstream_defaults():
    """The defaults a script relies on are upstream's (docs/from-openrlhf.md's table lists the few that differ)."""
    from openrlhf.config import TASK_CONFIGS

    def defaults(task):
        return TASK_CONFIGS[task]()

    dpo, sft = defaults("dpo"), defaults("sft")
    for cfg in (dpo, sft):
        assert (cfg.train.micro_batch_size, cfg.train.batch_size, cfg.data.max_samples) == (8, 128, 1000000)
        assert (cfg.adam.eps, cfg.adam.betas, cfg.min_lr_ratio, cfg.lr_scheduler) == (
            1e-8,
            (0.9, 0.95),
            0.1,
            "cosine_with_min_lr",
        )
        assert cfg.ds.attn_implementation == "auto"  # flash_attention_2 where it can run, sdpa on a CPU
        assert cfg.logger.wandb.key == "" and cfg.ckpt.max_mem == 100000000
    assert (dpo.data.max_len, dpo.adam.lr, dpo.train.max_epochs, dpo.eval.split) == (512, 1e-5, 1, "test")
    assert (sft.data.max_len, sft.adam.lr, sft.train.max_epochs, sft.eval.split) == (2048, 5e-6, 2, "train")
    assert dpo.data.prompt_key == "" and dpo.data.input_template == ""
    assert sft.data.output_key == "" and sft.data.input_template == "User: {}\nAssistant: "
    assert (dpo.logger.wandb.project, sft.logger.wandb.project) == ("openrlhf_train_dpo", "openrlhf_train_sft")
    # daDPO, KTO and score_logps read pairs as train_dpo does (score_logps must tokenise as its trainer).
    for task in ("dadpo", "kto", "score_logps"):
        assert (defaults(task).data.prompt_key, defaults(task).data.max_len) == ("", 512)
    # A task's own defaults are its own: changing one config never changes another's.
    dpo.logger.wandb.project = "changed"
    assert defaults("dpo").logger.wandb.project == "openrlhf_train_dpo"


@pytest.mark.parametrize(
    "flags,says",
    [
        (["--ds.ring_attn_size", "2"], "ring attention is not supported"),
        (["--ds.ring_attn_head_stride", "2"], "ring attention is not supported"),
        (["--ds.tensor_parallel_size", "2"], "tensor parallelism (AutoTP) is not supported"),
        (["--ds.zpg", "8"], "ZeRO++ hierarchical partitioning is not supported"),
        (["--ds.deepcompile"], "DeepCompile is not supported"),
        (["--ds.experts_implementation", "grouped_mm"], "MoE expert kernels is not supported"),
        (["--optim", "muon"], "Muon is not supported"),
        (["--muon.lr", "0.02"], "Muon optimizer is not supported"),
        (["--use_ms"], "ModelScope downloads are not supported"),
    ],
)
def test_features_we_do_not_have_are_refused_never_ignored(flags, says):
    found = problems(["--model.model_name_or_path", "m", "--data.dataset", "d"] + flags, "dpo")
    assert len(found) == 1 and found[0].startswith(flags[0]) and says in found[0], found


def test_bad_compat_values_are_refused_naming_the_flag():
    base = ["--model.model_name_or_path", "m", "--data.dataset", "a.jsonl,b.jsonl"]
    cases = {
        "--data.dataset_probs": ["--data.dataset_probs", "0.5", "0.3"],
        "--min_lr_ratio": ["--min_lr_ratio", "2"],
        "--adam.eps": ["--adam.eps", "0"],
        "--ds.grad_accum_dtype": ["--ds.grad_accum_dtype", "fp8"],
        "--ds.load_in_4bit": ["--ds.load_in_4bit"],
        "--data.multiturn": ["--data.multiturn"],
        "--ckpt.max_mem": ["--ckpt.max_mem", "0"],
    }
    for flag, extra in cases.items():
        found = problems(base + extra, "sft")
        assert any(p.startswith(flag) for p in found), (flag, found)
    assert any(p.startswith("--data.multiturn") for p in problems(base + ["--data.multiturn"], "dpo"))
    assert any(
        p.startswith("--model.pretrain_mode_enable")
        for p in problems(base + ["--model.pretrain_mode_enable", "--data.apply_chat_template"], "sft")
    )


# ---- the upstream scripts, scaled down, run here ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_mixtral(tmp_path_factory):
    """A tiny random Mixtral (mixture of experts: it returns a router balancing loss)."""
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    from tiny import make_tokenizer

    folder = str(tmp_path_factory.mktemp("mixtral"))
    tok = make_tokenizer(folder, vocab_size=400)
    torch.manual_seed(0)
    cfg = MixtralConfig(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    MixtralForCausalLM(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)  # the folder holds a loadable tokenizer
    return folder


def qa_rows(n):
    return [{"question": r["input"], "response": r["output"]} for r in sft_rows(n)]


def test_upstream_mixtral_lora_script_runs_scaled_down(tiny_mixtral, tmp_path):
    """train_sft_mixtral_lora.sh's flags on a tiny Mixtral: LoRA, MoE aux loss, packing, ZeRO-3, checkpointing
    (sizes, paths, dtype and attention scaled to this CPU)."""
    data = write_jsonl(str(tmp_path / "qa.jsonl"), qa_rows(16))
    out = str(tmp_path / "mixtral_lora")
    flags = replace(
        SFT_MIXTRAL_LORA,
        data__dataset=data,
        model__model_name_or_path=tiny_mixtral,
        ckpt__output_dir=out,
        train__batch_size="8",
        train__micro_batch_size="4",
        ds__param_dtype="fp32",
        ds__attn_implementation="sdpa",
        adam__lr="1e-2",
        data__max_len="128",
    )
    run("sft", flags + ["--train.max_epochs", "3", "--lr_warmup_ratio", "0"])
    recs = read_metrics(out)
    assert len(recs) == 6 and all(r["aux_loss"] > 0 for r in recs)  # the router loss, x 0.001
    assert recs[-1]["loss"] < recs[0]["loss"]
    assert os.path.exists(os.path.join(out, "adapter", "adapter_config.json"))
    cfg = json.load(open(os.path.join(out, "adapter", "adapter_config.json")))
    assert (cfg["r"], cfg["lora_alpha"]) == (64, 64)


def test_aux_loss_on_a_dense_model_is_a_clear_error(tiny_dir, sft_jsonl, tmp_path):
    with pytest.raises(UserError, match="--model.aux_loss_coef: .* not a mixture-of-experts model"):
        run(
            "sft",
            base_flags(
                tiny_dir, sft_jsonl, str(tmp_path / "o"), "--train.batch_size", "2", "--model.aux_loss_coef", "0.01"
            ),
        )


# ---- LoRA -------------------------------------------------------------------------------------------


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
    run(
        "dpo",
        base_flags(
            tiny_dir,
            data,
            out,
            "--train.batch_size",
            "8",
            "--train.micro_batch_size",
            "4",
            "--train.max_epochs",
            "4",
            "--model.beta",
            "0.5",
            "--adam.lr",
            "1e-2",
            "--ds.lora.rank",
            "8",
            "--ds.lora.alpha",
            "16",
        ),
    )
    losses = train_losses(out)
    # Step 1: the policy (zero-initialised adapters) equals the reference (adapters off): log 2 exactly.
    assert losses[0] == pytest.approx(0.6931, abs=1e-4) and losses[-1] < losses[0] - 0.2
    assert "no second copy" in capsys.readouterr().out
    check_lora_outputs(tiny_dir, out)


def test_lora_sft_trains_only_adapters(tiny_dir, sft_jsonl, tmp_path):
    out = str(tmp_path / "lora_sft")
    run(
        "sft",
        base_flags(
            tiny_dir,
            sft_jsonl,
            out,
            "--train.batch_size",
            "2",
            "--train.max_epochs",
            "4",
            "--adam.lr",
            "1e-2",
            "--ds.lora.rank",
            "4",
            "--ds.lora.target_modules",
            "q_proj",
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
        "--teacher.model_name_or_path",
        tiny_teacher_other_family,
        "--train.batch_size",
        "4",
        "--train.max_epochs",
        "2",
        "--model.beta",
        "0.5",
        "--teacher.beta",
        "0.1",
        "--adam.lr",
        "1e-2",
        "--ds.lora.rank",
        "8",
    )
    proc = run_deepspeed("openrlhf.cli.train_dadpo", replace(flags, ds__zero_stage="3"))
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


# ---- data: mixing, multi-turn, pre-training, Anthropic HH ------------------------------------------


def test_dataset_mixing_by_probabilities(tmp_path):
    from openrlhf.datasets.loading import load_sources

    a = write_jsonl(str(tmp_path / "a.jsonl"), [{"src": "a", "i": i} for i in range(10)])
    b = write_jsonl(str(tmp_path / "b.jsonl"), [{"src": "b", "i": i} for i in range(40)])
    rows = load_sources(f"{a},{b}", probs=(0.2, 0.8), seed=1)
    # Until every source is used up once: all of b's rows, a's oversampled (about 40 x 0.2 / 0.8 = 10+).
    assert {r["i"] for r in rows if r["src"] == "b"} == set(range(40))
    assert {r["i"] for r in rows if r["src"] == "a"} == set(range(10))
    n_a = sum(r["src"] == "a" for r in rows)
    assert 0.1 < n_a / len(rows) < 0.35
    assert rows == load_sources(f"{a},{b}", probs=(0.2, 0.8), seed=1)  # deterministic for a seed
    assert rows != load_sources(f"{a},{b}", probs=(0.2, 0.8), seed=2)
    assert len(load_sources(f"{a},{b}", probs=(0.2, 0.8), seed=1, max_samples=7)) == 7
    # Without probabilities: joined in order; each row still knows its own file and row.
    joined = load_sources(f"{a}, {b}")
    assert len(joined) == 50 and joined.origin(12) == f"{b}, row 3"
    with pytest.raises(DataError, match="2 sources but --data.dataset_probs gives 1"):
        load_sources(f"{a},{b}", probs=(1.0,))


def test_mixed_sft_data_names_the_file_of_a_bad_row(tiny_dir, tmp_path):
    good = write_jsonl(str(tmp_path / "good.jsonl"), sft_rows(4))
    bad = write_jsonl(str(tmp_path / "bad.jsonl"), sft_rows(2) + [{"input": "x"}])
    with pytest.raises(DataError, match=r"bad.jsonl, row 3: missing key 'output'"):
        run("sft", base_flags(tiny_dir, f"{good},{bad}", str(tmp_path / "o"), "--data.dataset_probs", "0.5", "0.5"))


def test_sft_on_two_mixed_sources(tiny_dir, tmp_path, capsys):
    a = write_jsonl(str(tmp_path / "a.jsonl"), sft_rows(4))
    b = write_jsonl(str(tmp_path / "b.jsonl"), sft_rows(8))
    out = str(tmp_path / "mix")
    run(
        "sft",
        base_flags(
            tiny_dir,
            f"{a},{b}",
            out,
            "--data.dataset_probs",
            "0.5",
            "0.5",
            "--train.batch_size",
            "4",
            "--train.max_epochs",
            "1",
        ),
    )
    from openrlhf.datasets.loading import load_sources

    n = len(load_sources(f"{a},{b}", probs=(0.5, 0.5), seed=42))
    assert n >= 12 and f"{n} rows, {n} kept" in capsys.readouterr().out
    assert len(train_losses(out)) == n // 4


def test_multiturn_sft_trains_every_assistant_turn(tiny_dir):
    from openrlhf.config.schema import DataConfig
    from openrlhf.datasets.sft_dataset import SFTDataset
    from openrlhf.datasets.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_dir)
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "And the sea?"},
        {"role": "assistant", "content": "It is big."},
    ]
    cfg = DataConfig(apply_chat_template=True, multiturn=True, input_key="messages", output_key="")
    item = SFTDataset([{"messages": conv}], tok, cfg)[0]
    trained = tok.decode(item["input_ids"][item["loss_mask"]])
    assert trained == "Hello.<|im_end|>\nIt is big.<|im_end|>\n"
    # Without --data.multiturn only the last answer is trained.
    last = SFTDataset(
        [{"messages": conv}], tok, DataConfig(apply_chat_template=True, input_key="messages", output_key="")
    )[0]
    assert tok.decode(last["input_ids"][last["loss_mask"]]) == "It is big.<|im_end|>\n"
    # output_key's answer is appended to the conversation.
    more = SFTDataset(
        [{"messages": conv[:4], "answer": "Wet."}],
        tok,
        DataConfig(apply_chat_template=True, multiturn=True, input_key="messages", output_key="answer"),
    )
    assert tok.decode(more[0]["input_ids"][more[0]["loss_mask"]]) == "Hello.<|im_end|>\nWet.<|im_end|>\n"
    with pytest.raises(DataError, match="row 1: key 'messages' is a str; --data.multiturn needs a conversation"):
        SFTDataset([{"messages": "hi"}], tok, cfg)


def test_pretrain_mode_trains_every_token_of_plain_text(tiny_dir):
    from openrlhf.config.schema import SFT_INPUT_TEMPLATE, DataConfig
    from openrlhf.datasets.sft_dataset import SFTDataset
    from openrlhf.datasets.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_dir)
    text = "The sea is big and the fox is red."
    ds = SFTDataset([{"input": text}], tok, DataConfig(input_template=SFT_INPUT_TEMPLATE, output_key=""), pretrain=True)
    item = ds[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    assert item["input_ids"].tolist() == bos + ids + [tok.eos_token_id]  # no template
    assert item["loss_mask"].all() and item["prompt_len"] == 0
    with pytest.raises(DataError, match="pre-training .* reads plain text"):
        SFTDataset([{"input": [{"role": "user", "content": "x"}]}], tok, DataConfig(), pretrain=True)


def test_sft_pretrain_mode_run(tiny_dir, tmp_path):
    data = write_jsonl(
        str(tmp_path / "text.jsonl"),
        [{"text": f"Tell me about {t}. It is nice."} for t in ("the sea", "a fox", "rain", "tea")],
    )
    out = str(tmp_path / "pt")
    flags = base_flags(
        tiny_dir,
        data,
        out,
        "--model.pretrain_mode_enable",
        "--data.input_key",
        "text",
        "--train.batch_size",
        "2",
        "--train.max_epochs",
        "3",
        "--adam.lr",
        "1e-2",
    )
    flags.remove("--data.apply_chat_template")
    run("sft", flags)
    losses = train_losses(out)
    assert len(losses) == 6 and losses[-1] < losses[0]


HH = [
    {
        "chosen": "\n\nHuman: What is the sea?\n\nAssistant: A large body of salt water.",
        "rejected": "\n\nHuman: What is the sea?\n\nAssistant: A kind of tea.",
    },
    {
        "chosen": "\n\nHuman: Hi.\n\nAssistant: Hello.\n\nHuman: Name a fox.\n\nAssistant: The red fox.",
        "rejected": "\n\nHuman: Hi.\n\nAssistant: Hello.\n\nHuman: Name a fox.\n\nAssistant: The red rain.",
    },
]


def test_anthropic_hh_rows_without_a_prompt_key(tiny_dir):
    from openrlhf.config.schema import DataConfig
    from openrlhf.datasets.preference_dataset import PreferenceDataset
    from openrlhf.datasets.templates import split_shared_prefix
    from openrlhf.datasets.tokenizer import load_tokenizer

    assert split_shared_prefix(HH[0]["chosen"], HH[0]["rejected"]) == (
        "\n\nHuman: What is the sea?\n\nAssistant:",
        " A large body of salt water.",
        " A kind of tea.",
    )
    # The prompt ends after the last shared "Assistant:" turn, not inside the answer's shared words.
    assert split_shared_prefix(HH[1]["chosen"], HH[1]["rejected"])[1:] == (" The red fox.", " The red rain.")
    # No turn marker: cut before the last shared whitespace, so that no word is split.
    assert split_shared_prefix("Q: tall trees", "Q: tall towers") == ("Q: tall", " trees", " towers")

    tok = load_tokenizer(tiny_dir)
    ds = PreferenceDataset(HH, tok, DataConfig(prompt_key=""))
    item = ds[1]
    assert item["prompt"].endswith("Name a fox.\n\nAssistant:")
    assert tok.decode(item["chosen_ids"]) == " The red fox." + tok.eos_token
    # A row with a prompt column is refused when --data.prompt_key is empty (it would be ignored).
    with pytest.raises(DataError, match="row 1: the row has a 'prompt' column but --data.prompt_key is empty"):
        PreferenceDataset(pref_rows(1), tok, DataConfig(prompt_key=""))


def test_dpo_on_anthropic_hh_rows(tiny_dir, tmp_path):
    data = write_jsonl(str(tmp_path / "hh.jsonl"), HH * 4)
    out = str(tmp_path / "hh")
    flags = base_flags(
        tiny_dir,
        data,
        out,
        "--train.batch_size",
        "4",
        "--train.max_epochs",
        "3",
        "--model.beta",
        "0.5",
        "--data.prompt_key",
        "",
    )
    flags.remove("--data.apply_chat_template")
    run("dpo", flags)
    losses = train_losses(out)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3) and losses[-1] < losses[0]


# ---- each compatibility flag reaches the code that uses it ------------------------------------------


def test_ds_flags_reach_the_deepspeed_config():
    from openrlhf.config.schema import DSConfig
    from openrlhf.utils.deepspeed.ds_config import train_ds_config

    cfg = train_ds_config(
        DSConfig(zero_stage=2, overlap_comm=True, grad_accum_dtype="fp32", use_universal_ckpt=True),
        micro_batch_size=1,
        accumulated_gradient=1,
        world_size=1,
        max_norm=1.0,
    )
    assert cfg["zero_optimization"]["overlap_comm"] and cfg["zero_optimization"]["contiguous_gradients"]
    assert cfg["data_types"] == {"grad_accum_dtype": "fp32"} and cfg["checkpoint"] == {"load_universal": True}
    plain = train_ds_config(
        DSConfig(zero_stage=2), micro_batch_size=1, accumulated_gradient=1, world_size=1, max_norm=1.0
    )
    assert "data_types" not in plain and "checkpoint" not in plain
    assert not plain["zero_optimization"].get("overlap_comm", False)


def test_adam_eps_min_lr_ratio_and_determinism_reach_optimizer_scheduler_and_torch(tiny_dir, tmp_path):
    out = str(tmp_path / "o")
    data = write_jsonl(str(tmp_path / "s.jsonl"), sft_rows(40))
    try:
        from openrlhf.recipes.common import make_strategy, prepare_policy

        cfg = load_config(
            base_flags(
                tiny_dir,
                data,
                out,
                "--adam.eps",
                "1e-3",
                "--min_lr_ratio",
                "0.5",
                "--lr_warmup_ratio",
                "0",
                "--train.batch_size",
                "1",
                "--train.full_determinism_enable",
            ),
            "sft",
        )
        strategy = make_strategy(cfg)
        assert torch.are_deterministic_algorithms_enabled()
        engine = prepare_policy(strategy, cfg, total_steps=20)
        assert {g["eps"] for g in engine.optimizer.param_groups} == {1e-3}
        sched = engine.lr_scheduler
        for _ in range(20):
            sched.step()
        assert sched.get_last_lr()[0] == pytest.approx(0.5 * cfg.adam.lr, rel=1e-3)
        strategy.finish()
    finally:
        torch.use_deterministic_algorithms(False)


def test_wandb_key_switches_wandb_on_with_group(monkeypatch, tmp_path):
    from openrlhf.config.schema import LoggerConfig, WandbConfig
    from openrlhf.utils import logging as metrics_logging

    calls = {}
    fake = types.ModuleType("wandb")
    fake.login = lambda key: calls.setdefault("login", key)
    fake.init = lambda **kw: (
        calls.setdefault("init", kw)
        and types.SimpleNamespace(
            log=lambda *a, **k: None,
            finish=lambda: None,
            define_metric=lambda name, **k: calls.setdefault("axes", {}).__setitem__(name, k.get("step_metric")),
        )
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(metrics_logging, "require_package", lambda *a, **k: None)
    cfg = LoggerConfig(wandb=WandbConfig(key="abc123", project="p", group="g", org="o", run_name="r"))
    metrics_logging.MetricsLogger(str(tmp_path), cfg, {"x": 1})
    assert calls["login"] == "abc123"
    assert {k: calls["init"][k] for k in ("project", "group", "entity", "name")} == {
        "project": "p",
        "group": "g",
        "entity": "o",
        "name": "r",
    }
    # OpenRLHF's step axes: train/* against train/global_step, eval/* against eval/global_step.
    assert calls["axes"] == {
        "train/global_step": None,
        "train/*": "train/global_step",
        "eval/global_step": None,
        "eval/*": "eval/global_step",
    }
    calls.clear()
    metrics_logging.MetricsLogger(str(tmp_path), LoggerConfig(wandb=WandbConfig(key="True")))
    assert "login" not in calls and "init" in calls  # "True": this machine's `wandb login`
    calls.clear()
    metrics_logging.MetricsLogger(str(tmp_path), LoggerConfig(wandb=WandbConfig(project="p")))
    assert calls == {}  # a project alone does not switch wandb on (upstream's rule)


def test_disable_fast_tokenizer_reaches_the_tokenizer(tiny_dir, monkeypatch):
    import transformers

    from openrlhf.config.schema import DataConfig
    from openrlhf.datasets.tokenizer import data_tokenizer

    seen = []
    real = transformers.AutoTokenizer.from_pretrained

    def spy(path, **kw):
        seen.append(kw.get("use_fast"))
        return real(path, **kw)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    data_tokenizer(tiny_dir, DataConfig())
    data_tokenizer(tiny_dir, DataConfig(disable_fast_tokenizer=True))
    # (transformers 5 keeps a tokenizer that exists only as a tokenizers file fast either way.)
    assert seen == [True, False]


def test_dataloader_workers_and_reentrant_checkpointing_keep_the_loss_curve(tiny_dir, sft_jsonl, tmp_path):
    common = ("--train.batch_size", "2", "--train.max_epochs", "2", "--adam.lr", "1e-2")
    ref = str(tmp_path / "ref")
    run("sft", base_flags(tiny_dir, sft_jsonl, ref, *common))
    for name, extra in (
        ("workers", ("--data.dataloader_num_workers", "2")),
        ("reentrant", ("--model.gradient_checkpointing_enable", "--model.gradient_checkpointing_reentrant")),
    ):
        out = str(tmp_path / name)
        run("sft", base_flags(tiny_dir, sft_jsonl, out, *common, *extra))
        assert train_losses(out) == pytest.approx(train_losses(ref), rel=1e-5), name


def test_disable_ds_writes_no_resumable_checkpoint_but_hf_exports(tiny_dir, sft_jsonl, tmp_path):
    out = str(tmp_path / "o")
    run(
        "sft",
        base_flags(
            tiny_dir,
            sft_jsonl,
            out,
            "--train.batch_size",
            "2",
            "--ckpt.save_steps",
            "2",
            "--ckpt.disable_ds",
            "--ckpt.save_hf",
            "--train.max_epochs",
            "1",
        ),
    )
    names = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert names == ["global_step2_hf", "global_step4_hf"]


def test_ckpt_max_mem_deletes_the_oldest_checkpoints(tmp_path):
    from openrlhf.utils.deepspeed import ckpt_io

    ck = str(tmp_path / "ck")
    for step in (1, 2, 3):
        os.makedirs(os.path.join(ck, f"global_step{step}"))
        with open(os.path.join(ck, f"global_step{step}", "w.bin"), "wb") as f:
            f.write(b"\0" * 600_000)
    # Three checkpoints of 0.6 MB against 1.3 MB (0.0012 GB): the oldest goes.
    assert ckpt_io.prune(ck, max_num=10, keep_tag="global_step3", max_gb=1.3e6 / 1024**3) == ["global_step1"]
    assert ckpt_io.prune(ck, max_num=10, keep_tag="global_step3", max_gb=1.0) == []


def test_attn_auto_picks_flash_only_for_half_precision_on_cuda(monkeypatch):
    """flash-attn refuses fp32 at its first forward: ``auto`` picks it only for bf16 / fp16 models on a CUDA
    machine that has it (the CUDA machine and the package are pretended here)."""
    from openrlhf.models import actor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(actor, "has_package", lambda module: module == "flash_attn")  # actor's own name for it
    for dtype, want in (
        (torch.bfloat16, "flash_attention_2"),
        (torch.float16, "flash_attention_2"),
        (torch.float32, "sdpa"),
        (None, "sdpa"),
    ):
        assert actor.resolve_attn_implementation("auto", dtype) == want, dtype
    monkeypatch.setattr(actor, "has_package", lambda module: False)
    assert actor.resolve_attn_implementation("auto", torch.bfloat16) == "sdpa"


def test_attn_auto_is_sdpa_on_a_cpu(tiny_dir, monkeypatch):
    """A machine without CUDA (a GPU machine is made to look like one, so this runs everywhere)."""
    from openrlhf.models.actor import Actor, resolve_attn_implementation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_attn_implementation("auto") == "sdpa"
    assert Actor.from_pretrained(tiny_dir, attn_implementation="auto").model.config._attn_implementation == "sdpa"


@pytest.mark.gpu
def test_attn_auto_is_flash_attention_2_on_a_gpu_with_flash_attn(tiny_dir):
    """On a CUDA machine with flash-attn (the `flash` extra), `auto` is flash_attention_2 and the model loads with it."""
    from openrlhf.models.actor import Actor, resolve_attn_implementation
    from openrlhf.utils.errors import has_package

    assert torch.cuda.is_available() and has_package("flash_attn"), "a CUDA machine with `pip install -e .[flash]`"
    assert resolve_attn_implementation("auto", torch.bfloat16) == "flash_attention_2"
    actor = Actor.from_pretrained(tiny_dir, dtype=torch.bfloat16, attn_implementation="auto")
    assert actor.model.config._attn_implementation == "flash_attention_2"
