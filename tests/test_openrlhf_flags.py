"""Coming from OpenRLHF (0.11), its flags: upstream's example scripts (their flags, and run scaled down),
upstream's defaults, features refused (never ignored), each compatibility flag reaching the code that uses
it, dashboard keys, schedulers and attention."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types

import pytest
import torch

from openrlhf.config import ConfigError, load_config
from openrlhf.utils.errors import UserError

from tiny import (
    as_flags,
    base_flags,
    pref_rows,
    read_metrics,
    replace_flags,
    run_in_process,
    sft_rows,
    train_losses,
    write_jsonl,
)


def parse(flags, task):
    return load_config(flags, task, check_paths=False, check_packages=False)


def problems(flags, task):
    with pytest.raises(ConfigError) as e:
        parse(flags, task)
    return e.value.problems


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
        "--model.beta" in p for p in problems(replace_flags(DPO_LLAMA, model__beta="x")[:-1] + ["--beta", "0.1"], "dpo")
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
        (["--use_ms"], "ModelScope downloads are not supported"),
    ],
)
def test_features_we_do_not_have_are_refused_never_ignored(flags, says):
    found = problems(["--model.model_name_or_path", "m", "--data.dataset", "d"] + flags, "dpo")
    assert len(found) == 1 and found[0].startswith(flags[0]) and says in found[0], found


def test_optim_muon_flags_are_checked():
    """--optim muon and --muon.* with upstream 0.11.2's meaning; what DeepSpeed's Muon cannot honour is refused."""
    base = ["--model.model_name_or_path", "m", "--data.dataset", "d"]
    cfg = parse(base + ["--optim", "muon", "--muon.lr", "0.01", "--muon.momentum", "0.9"], "dpo")
    assert cfg.optim == "muon" and (cfg.muon.lr, cfg.muon.momentum) == (0.01, 0.9)
    for flags, says in (
        (["--muon.lr", "0.01"], "--muon.lr: set, but --optim is adam: add --optim muon"),
        (["--optim", "sgd"], "--optim: 'sgd': expected one of adam, muon"),
        (["--optim", "muon", "--muon.ns_steps", "3"], "--muon.ns_steps: DeepSpeed's Muon always runs 5"),
        (["--optim", "muon", "--muon.nesterov", "false"], "--muon.nesterov: DeepSpeed's Muon always uses Nesterov"),
        (["--optim", "muon", "--ds.adam_offload"], "--ds.adam_offload: not with --optim muon"),
        (["--optim", "muon", "--muon.momentum", "1"], "--muon.momentum: must be in [0, 1)"),
    ):
        found = problems(base + flags, "sft")
        assert any(p.startswith(says) for p in found), (flags, found)


@pytest.mark.slow  # ~100 s (DeepSpeed compiles Muon's kernels in each run): the main CI leg only
def test_optim_muon_trains_at_zero_0_and_2_alike(tiny_dir, sft_jsonl, tmp_path):
    """An SFT run with --optim muon: the loss goes down, and ZeRO-2 (Muon orthogonalising the gathered flat
    partition) gives ZeRO-0's losses."""
    losses = {}
    for stage in ("0", "2"):
        out = str(tmp_path / f"z{stage}")
        flags = {"optim": "muon", "max_norm": "0", "ds.zero_stage": stage, "adam.lr": "1e-3", "train.batch_size": "4"}
        run_in_process("sft", base_flags(tiny_dir, sft_jsonl, out, *as_flags(flags)))
        losses[stage] = train_losses(out)
    assert losses["0"] == pytest.approx(losses["2"], abs=1e-4)  # measured: 1.4e-5 apart
    assert len(losses["0"]) >= 4 and losses["0"][-1] < losses["0"][0]


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


def test_experts_implementation_reaches_the_moe_layers(tiny_mixtral, tmp_path):
    """--ds.experts_implementation takes what transformers takes (refused otherwise, naming the choices) and
    reaches the loaded model: eager and batched_mm give the same logits; grouped_mm (transformers' default) is
    what loads without the flag."""
    from openrlhf.models.actor import Actor

    ids = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    logits = {}
    for name in ("", "eager", "batched_mm"):
        actor = Actor.from_pretrained(tiny_mixtral, experts_implementation=name)
        assert actor.model.config._experts_implementation == (name or "grouped_mm")
        with torch.no_grad():
            logits[name] = actor.model(ids).logits
    assert torch.allclose(logits["eager"], logits["batched_mm"], atol=1e-5)
    assert torch.allclose(logits["eager"], logits[""], atol=1e-5)
    base = ["--model.model_name_or_path", "m", "--data.dataset", "d"]
    assert parse(base + ["--ds.experts_implementation", "batched_mm"], "sft").ds.experts_implementation == "batched_mm"
    (found,) = problems(base + ["--ds.experts_implementation", "fastest"], "sft")
    assert found.startswith("--ds.experts_implementation: transformers does not know 'fastest'; it takes eager, ")
    assert "batched_mm" in found and "grouped_mm" in found
    gen = base + ["--generate.output_path", str(tmp_path / "o.jsonl"), "--ds.experts_implementation", "eager"]
    assert any(
        p.startswith("--ds.experts_implementation: applies to the hf backend only")
        for p in problems(gen + ["--generate.backend", "vllm"], "generate")
    )


def qa_rows(n):
    return [{"question": r["input"], "response": r["output"]} for r in sft_rows(n)]


def test_upstream_mixtral_lora_script_runs_scaled_down(tiny_mixtral, tmp_path):
    """train_sft_mixtral_lora.sh's flags on a tiny Mixtral: LoRA, MoE aux loss, packing, ZeRO-3, checkpointing
    (sizes, paths, dtype and attention scaled to this CPU)."""
    data = write_jsonl(str(tmp_path / "qa.jsonl"), qa_rows(16))
    out = str(tmp_path / "mixtral_lora")
    flags = replace_flags(
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
    run_in_process("sft", flags + ["--train.max_epochs", "3", "--lr_warmup_ratio", "0"])
    recs = read_metrics(out)
    assert len(recs) == 6 and all(r["aux_loss"] > 0 for r in recs)  # the router loss, x 0.001
    assert recs[-1]["loss"] < recs[0]["loss"]
    assert os.path.exists(os.path.join(out, "adapter", "adapter_config.json"))
    cfg = json.load(open(os.path.join(out, "adapter", "adapter_config.json")))
    assert (cfg["r"], cfg["lora_alpha"]) == (64, 64)


def test_aux_loss_on_a_dense_model_is_a_clear_error(tiny_dir, sft_jsonl, tmp_path):
    with pytest.raises(UserError, match="--model.aux_loss_coef: .* not a mixture-of-experts model"):
        run_in_process(
            "sft",
            base_flags(
                tiny_dir, sft_jsonl, str(tmp_path / "o"), "--train.batch_size", "2", "--model.aux_loss_coef", "0.01"
            ),
        )


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
                *as_flags(
                    {
                        "adam.eps": "1e-3",
                        "min_lr_ratio": "0.5",
                        "lr_warmup_ratio": "0",
                        "train.batch_size": "1",
                        "train.full_determinism_enable": None,
                    }
                ),
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
    run_in_process("sft", base_flags(tiny_dir, sft_jsonl, ref, *common))
    for name, extra in (
        ("workers", ("--data.dataloader_num_workers", "2")),
        ("reentrant", ("--model.gradient_checkpointing_enable", "--model.gradient_checkpointing_reentrant")),
    ):
        out = str(tmp_path / name)
        run_in_process("sft", base_flags(tiny_dir, sft_jsonl, out, *common, *extra))
        assert train_losses(out) == pytest.approx(train_losses(ref), rel=1e-5), name


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


def test_dashboard_keys_are_openrlhf_keys():
    from openrlhf.utils.logging import dashboard_view

    dpo = {"step": 3, "loss": 0.9, "preference_loss": 0.6, "nll_loss": 0.6, "acc": 0.5, "lr": 1e-5}
    view = dashboard_view(dpo, 3)
    assert view["train/loss"] == 0.6 and view["train/total_loss"] == 0.9  # OpenRLHF's loss: the preference loss
    assert view["train/loss_mean"] == 0.6 and view["train/acc_mean"] == 0.5 and view["train/lr"] == 1e-5
    assert view["train/global_step"] == 3 and not any(k.startswith("eval/") or "/" not in k for k in view)
    ev = dashboard_view({"step": 4, "eval_loss": 0.8, "eval_preference_loss": 0.7, "eval_acc": 0.25}, 4)
    assert ev["eval/eval_loss"] == 0.7 and ev["eval/acc_mean"] == 0.25 and ev["eval/global_step"] == 4
    assert ev["eval/loss"] == 0.7 and ev["eval/total_loss"] == 0.8
    assert not any(k.startswith("train/") for k in ev)
    sft = dashboard_view({"step": 1, "loss": 2.5}, 1, loss_name="gpt_loss")
    assert sft["train/gpt_loss"] == sft["train/loss"] == 2.5
    assert dashboard_view({"step": 1, "eval_loss": 2.0}, 1, loss_name="gpt_loss")["eval/eval gpt_loss"] == 2.0


def test_tensorboard_run_folder_and_keys(tiny_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(8))
    out, tb = str(tmp_path / "dpo"), str(tmp_path / "tb")
    run_in_process(
        "dpo",
        base_flags(
            tiny_dir,
            data,
            out,
            *as_flags(
                {
                    "train.batch_size": "4",
                    "train.micro_batch_size": "2",
                    "model.nll_loss_coef": "0.5",
                    "eval.dataset": data,
                    "eval.split": "train",
                    "eval.steps": "2",
                    "logger.tensorboard_dir": tb,
                    "logger.wandb.run_name": "run1",
                }
            ),
        ),
    )
    assert os.listdir(tb) == ["run1"]
    acc = EventAccumulator(os.path.join(tb, "run1"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/total_loss", "train/lr", "eval/eval_loss", "eval/acc_mean"} <= tags
    assert not any("/" not in t for t in tags)
    recs = [r for r in read_metrics(out) if "loss" in r]
    got = [e.value for e in acc.Scalars("train/loss")]
    assert got == pytest.approx([r["preference_loss"] for r in recs], rel=1e-6)
    assert [e.value for e in acc.Scalars("train/total_loss")] == pytest.approx([r["loss"] for r in recs], rel=1e-6)
    assert all(r["loss"] > r["preference_loss"] + 0.1 for r in recs)  # the NLL term: the two differ


def test_every_transformers_scheduler_is_taken_or_refused_with_a_reason():
    from transformers import SchedulerType

    from openrlhf.config import ConfigError
    from openrlhf.config.schema import LR_SCHEDULERS, LR_SCHEDULERS_REFUSED

    names = {t.value for t in SchedulerType}
    assert set(LR_SCHEDULERS) | set(LR_SCHEDULERS_REFUSED) == names  # none left out, none made up
    assert not set(LR_SCHEDULERS) & set(LR_SCHEDULERS_REFUSED)
    for name in (
        "cosine_with_restarts",
        "polynomial",
        "inverse_sqrt",
        "warmup_stable_decay",
        "cosine_warmup_with_min_lr",
    ):
        assert (
            load_config(
                ["--model.model_name_or_path", "m", "--data.dataset", "d", "--lr_scheduler", name], task="dpo"
            ).lr_scheduler
            == name
        )
    with pytest.raises(
        ConfigError,
        match=r"--lr_scheduler: 'reduce_lr_on_plateau' is not supported: it steps on a "
        r"validation metric",
    ):
        load_config(
            ["--model.model_name_or_path", "m", "--data.dataset", "d", "--lr_scheduler", "reduce_lr_on_plateau"],
            task="dpo",
        )


def test_attention_strings_are_checked_by_transformers(tiny_dir):
    from openrlhf.config import ConfigError
    from openrlhf.models.actor import Actor

    flags = ["--model.model_name_or_path", tiny_dir, "--data.dataset", "d"]
    for name in ("flex_attention", "paged|eager", "kernels-community/vllm-flash-attn3", "org/repo@v1:fn", "auto"):
        cfg = load_config(flags + ["--ds.attn_implementation", name], task="sft", check_packages=False)
        assert cfg.ds.attn_implementation == name
    # a hub kernel is loaded by the kernels package: without it, refused when the flags are read
    if importlib.util.find_spec("kernels") is None:
        with pytest.raises(ConfigError, match=r"--ds.attn_implementation: the hub kernel .* needs the kernels package"):
            load_config(flags + ["--ds.attn_implementation", "org/repo@v1:fn"], task="sft")
    with pytest.raises(
        ConfigError,
        match=r"--ds.attn_implementation: transformers does not know 'flash_atention_2'; "
        r"it takes eager, .*flex_attention",
    ):
        load_config(flags + ["--ds.attn_implementation", "flash_atention_2"], task="sft")
    # A name transformers takes reaches the model: flex attention runs (on a CPU too) like sdpa.
    ids = torch.tensor([[5, 9, 13, 21, 34, 2]])
    mask = torch.ones_like(ids)
    outs = []
    for name in ("sdpa", "flex_attention"):
        actor = Actor.from_pretrained(tiny_dir, attn_implementation=name)
        assert actor.model.config._attn_implementation == name
        with torch.no_grad():
            outs.append(actor.model(input_ids=ids, attention_mask=mask).logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-4)
