"""Coming from OpenRLHF (0.11): checkpoints that cross both ways, dashboard keys, schedulers, attention
strings, lora_combiner, data sources and the token-level choices (docs/from-openrlhf.md)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil

import pytest
import torch

from openrlhf.config import load_config

from tiny import base_flags, ids_of, pref_rows, read_metrics, train_losses, write_jsonl


def run_dpo(flags: list) -> dict:
    from openrlhf.recipes.dpo import train_dpo

    return train_dpo(load_config(flags, task="dpo"))


# ---- checkpoints ------------------------------------------------------------------------------------


def _as_openrlhf_checkpoint(ours: str, tag: str, dst: str, batch_size: int) -> None:
    """An OpenRLHF 0.11 checkpoint folder from one of ours, written from what OpenRLHF documents and keeps:
    DeepSpeed's files of ``tag`` and a ``latest`` pointer, the engine's module under the HF model's
    names, and a client state of ``{"consumed_samples": global_step x batch_size}`` only (no RNG files,
    no meta file, none of our keys)."""
    os.makedirs(dst)
    shutil.copytree(os.path.join(ours, tag), os.path.join(dst, tag))
    for name in os.listdir(os.path.join(dst, tag)):
        if name.startswith("rng_state_rank") or name == "openrlhf_ckpt.json":
            os.remove(os.path.join(dst, tag, name))
    path = os.path.join(dst, tag, "mp_rank_00_model_states.pt")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("openrlhf_client_state", "global_step", "epoch", "epoch_consumed_samples"):
        ckpt.pop(key)
    step = int(tag[len("global_step") :])
    ckpt["consumed_samples"] = step * batch_size
    torch.save(ckpt, path)
    with open(os.path.join(dst, "latest"), "w") as f:
        f.write(tag)


def test_checkpoints_cross_with_openrlhf_both_ways(tiny_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(16))
    flags = lambda out, *x: base_flags(
        tiny_dir,
        data,
        out,
        "--train.batch_size",
        "4",  # noqa: E731
        "--train.micro_batch_size",
        "2",
        "--train.max_epochs",
        "2",
        *x,
    )
    full = str(tmp_path / "full")
    run_dpo(flags(full, "--ckpt.save_steps", "3", "--ckpt.save_hf", "--ckpt.max_num", "5", "--ckpt.load_enable"))
    # --ckpt.load_enable with nothing to resume: one line naming where it looked.
    said = [line for line in capsys.readouterr().out.splitlines() if "--ckpt.load_enable" in line]
    assert len(said) == 1 and os.path.join(full, "checkpoints") in said[0] and "step 0" in said[0]
    expected = train_losses(full)
    assert len(expected) == 8  # 4 steps per epoch
    ckdir = os.path.join(full, "checkpoints")

    # Ours -> OpenRLHF: what its train_dpo does on resume (DeepSpeed's load_checkpoint of the engine around
    # the HF model, strict, following `latest`; then states["consumed_samples"]).
    from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy

    cfg = load_config(flags(str(tmp_path / "x")), task="dpo")
    s = DeepspeedStrategy(cfg.ds, cfg.train, cfg.max_norm, cfg.adam)
    s.setup_distributed()
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir)
    opt = s.create_optimizer(hf)
    engine = s.prepare_train(hf, opt, s.create_scheduler(opt, "cosine_with_min_lr", 0.0, 8))
    load_path, states = engine.load_checkpoint(ckdir)
    assert load_path is not None and os.path.basename(os.path.dirname(load_path)) == "global_step6"
    assert states["consumed_samples"] == 6 * 4
    # OpenRLHF's resume arithmetic on that number: step 6 = epoch 1, 8 rows of it done.
    assert (24 // 4 // 4, 24 % (4 * 4)) == (1, 8)
    exported = AutoModelForCausalLM.from_pretrained(os.path.join(ckdir, "global_step6_hf"))
    for (n, p), (_, q) in zip(engine.module.named_parameters(), exported.named_parameters(), strict=True):
        assert torch.equal(p.detach(), q.detach()), n
    s.finish()

    # OpenRLHF -> ours: its step-3 checkpoint resumes here at step 3, the same data position: the tail
    # of the loss curve is the uninterrupted run's.
    upstream = str(tmp_path / "ckpt" / "checkpoints_dpo")
    _as_openrlhf_checkpoint(ckdir, "global_step3", upstream, batch_size=4)
    resumed = str(tmp_path / "resumed")
    run_dpo(flags(resumed, "--ckpt.path", upstream, "--ckpt.load_enable"))
    assert "resumed from" in capsys.readouterr().out
    recs = read_metrics(resumed)
    assert [r["step"] for r in recs] == [4, 5, 6, 7, 8]
    assert train_losses(resumed) == pytest.approx(expected[3:], abs=1e-5)


def test_module_weights_under_hf_names_and_earlier_checkpoints_still_load(tiny_dir):
    from transformers import AutoModelForCausalLM

    from openrlhf.models.actor import Actor
    from openrlhf.utils.deepspeed.wrapping import hf_names_hook, load_module_either_naming

    actor = Actor(AutoModelForCausalLM.from_pretrained(tiny_dir))
    prefixed = {k: v.clone() for k, v in actor.state_dict().items()}  # how earlier versions saved it
    assert all(k.startswith("model.") for k in prefixed) and "model.lm_head.weight" in prefixed
    actor.register_state_dict_post_hook(hf_names_hook)
    hf_named = actor.state_dict()
    assert list(hf_named) == list(actor.model.state_dict())  # OpenRLHF's names: the HF model's own
    other = Actor(AutoModelForCausalLM.from_pretrained(tiny_dir))
    for p in other.parameters():
        torch.nn.init.zeros_(p)
    load_module_either_naming(src=hf_named, dst=other)
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), actor.parameters(), strict=True))
    for p in other.parameters():
        torch.nn.init.zeros_(p)
    load_module_either_naming(src=prefixed, dst=other)
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), actor.parameters(), strict=True))


def test_no_checkpoint_line_names_openrlhf_default_folders(tmp_path, monkeypatch):
    from openrlhf.trainer.base import _openrlhf_default_hint

    monkeypatch.chdir(tmp_path)
    assert _openrlhf_default_hint() == ""
    os.makedirs(tmp_path / "ckpt" / "checkpoints_dpo" / "global_step4")
    assert "ckpt/checkpoints_dpo holds one: pass --ckpt.path" in _openrlhf_default_hint()


def test_resume_position_from_either_client_state():
    from openrlhf.utils.deepspeed import ckpt_io

    ours = ckpt_io.trainer_state(step=6, batch_size=4, steps_per_epoch=4)
    assert ours == {"consumed_samples": 24, "global_step": 6, "epoch": 1, "epoch_consumed_samples": 8}
    assert ckpt_io.resume_position(ours, 4, 4) == (6, 1, 8)
    assert ckpt_io.resume_position({"consumed_samples": 24}, 4, 4) == (6, 1, 8)  # OpenRLHF's
    assert ckpt_io.resume_position({"consumed_samples": 16}, 4, 4) == (4, 1, 0)  # an epoch boundary
    assert ckpt_io.resume_position({"step": 3}, 4, 4) == (3, 0, 12)  # a folder name only (Ray's meta read)


# ---- dashboards ---------------------------------------------------------------------------------------


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
    run_dpo(
        base_flags(
            tiny_dir,
            data,
            out,
            "--train.batch_size",
            "4",
            "--train.micro_batch_size",
            "2",
            "--model.nll_loss_coef",
            "0.5",
            "--eval.dataset",
            data,
            "--eval.split",
            "train",
            "--eval.steps",
            "2",
            "--logger.tensorboard_dir",
            tb,
            "--logger.wandb.run_name",
            "run1",
        )
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


# ---- schedulers and attention ----------------------------------------------------------------------


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


# ---- lora_combiner ---------------------------------------------------------------------------------


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
        ["--model_path", tiny_dir, "--lora_path", adapter, "--output_path", out, "--ds.param_dtype", "fp32"],
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


# ---- data sources ----------------------------------------------------------------------------------


def test_csv_of_another_separator_a_header_only_and_empty_cells_are_one_line(tiny_dir, tmp_path):
    """A ';'-separated file (one column), a header without rows, and an empty / N/A cell (None, as datasets reads
    it, as OpenRLHF does): each one line naming the file (and the row and key)."""
    from openrlhf.datasets.loading import load_rows
    from openrlhf.datasets.preference_dataset import PreferenceDataset
    from openrlhf.datasets.tokenizer import load_tokenizer
    from openrlhf.utils.errors import DataError

    (tmp_path / "semi.csv").write_text("prompt;chosen;rejected\nhi;a;b\n")
    with pytest.raises(
        DataError, match=r"semi.csv: one column named 'prompt;chosen;rejected': the file looks separated by ';'"
    ):
        load_rows(str(tmp_path / "semi.csv"))
    (tmp_path / "head.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match=r"head.csv: no rows \(the CSV file holds its header only\)"):
        load_rows(str(tmp_path / "head.csv"))
    (tmp_path / "na.csv").write_text("prompt,chosen,rejected\nhi,,N/A\nyo,good,bad\n")
    rows = load_rows(str(tmp_path / "na.csv"))
    assert rows[0] == {"prompt": "hi", "chosen": None, "rejected": None}
    cfg = load_config(
        ["--model.model_name_or_path", tiny_dir, "--data.dataset", "d", "--data.prompt_key", "prompt"], "dpo"
    )
    with pytest.raises(
        DataError, match=r"row 1: key 'chosen' has no value \(null; in a CSV file an empty or N/A cell\)"
    ):
        PreferenceDataset(rows, load_tokenizer(tiny_dir), cfg.data, str(tmp_path / "na.csv"), model_path=tiny_dir)


def test_csv_arrow_and_name_at_data_dir_sources(tmp_path, monkeypatch):
    import csv

    import datasets

    from openrlhf.datasets.loading import load_rows

    rows = pref_rows(5)
    path = str(tmp_path / "pairs.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert load_rows(path) == rows
    assert load_rows(path, max_samples=2) == rows[:2]
    saved = str(tmp_path / "saved")
    datasets.Dataset.from_list(rows).save_to_disk(saved)
    arrow = [os.path.join(saved, n) for n in os.listdir(saved) if n.endswith(".arrow")]
    assert len(arrow) == 1 and load_rows(arrow[0]) == rows
    # name@data_dir: only the files under that folder of a local folder ...
    for sub, part in (("a", rows[:2]), ("b", rows[2:])):
        write_jsonl(str(tmp_path / "multi" / sub / "train.jsonl"), part)
    assert load_rows(str(tmp_path / "multi") + "@b") == rows[2:]
    assert len(load_rows(str(tmp_path / "multi"))) == 5
    with pytest.raises(Exception, match=r"'c' is not a folder in"):
        load_rows(str(tmp_path / "multi") + "@c")
    # ... or of a hub dataset: datasets.load_dataset(name, data_dir=...)
    seen = {}

    def fake_load(name, split=None, **kw):
        seen.update(name=name, split=split, **kw)
        return datasets.Dataset.from_list(rows[:1])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_rows("org/pairs@helpful-base", split="test") == rows[:1]
    assert seen == {"name": "org/pairs", "split": "test", "data_dir": "helpful-base"}


def test_several_sources_are_capped_in_total(tmp_path):
    from openrlhf.datasets.loading import load_sources

    a = write_jsonl(str(tmp_path / "a.jsonl"), pref_rows(4))
    b = write_jsonl(str(tmp_path / "b.jsonl"), pref_rows(6)[2:])
    joined = load_sources(f"{a},{b}", max_samples=5)
    assert joined == (pref_rows(4) + pref_rows(6)[2:])[:5]  # 4 of a, then 1 of b: 5 in all (OpenRLHF's cap)
    assert len(load_sources(f"{a},{b}", max_samples=3)) == 3  # a alone gives 3 (each source capped too)
    assert len(load_sources(f"{a},{b}")) == 8
    assert len(load_sources(f"{a},{b}", max_samples=5, probs=[0.5, 0.5], seed=1)) == 5


# ---- token-level choices (docs/from-openrlhf.md: one test per difference) ------------------
# Each test builds what OpenRLHF 0.11 feeds the model from its documented rule (the text it tokenizes,
# add_special_tokens=False) next to ours, and pins the choice.

PROMPT, ANSWER = "What is the capital of France?", "The capital of France is Paris."


def test_kept_plain_text_prompts_start_with_bos(other_family_tok):
    from openrlhf.datasets.templates import tokenize_pair

    p_ids, _ = tokenize_pair(other_family_tok, PROMPT, ANSWER, apply_chat_template=False, input_template="Q: {}\nA: ")
    upstream = ids_of(other_family_tok, f"Q: {PROMPT}\nA: ")  # OpenRLHF: add_special_tokens=False, no BOS
    assert p_ids == [other_family_tok.bos_token_id] + upstream


def test_kept_eos_is_the_eos_id_right_after_the_answer(other_family_tok):
    from openrlhf.datasets.templates import tokenize_pair

    _, r_ids = tokenize_pair(other_family_tok, PROMPT, ANSWER, apply_chat_template=False, input_template="Q: {}\nA: ")
    assert r_ids == ids_of(other_family_tok, ANSWER) + [other_family_tok.eos_token_id]
    # OpenRLHF appends " " + eos_token as text: one more token, a space, before the EOS.
    upstream = ids_of(other_family_tok, ANSWER + " " + other_family_tok.eos_token)
    assert upstream[-1] == other_family_tok.eos_token_id and len(upstream) == len(r_ids) + 1
    assert other_family_tok.decode(upstream[-2:-1]).strip() == ""


def test_kept_chat_template_answer_ends_as_the_template_writes_it(student_tok):
    from openrlhf.datasets.templates import tokenize_pair

    msgs = [{"role": "user", "content": PROMPT}]
    p_ids, r_ids = tokenize_pair(student_tok, PROMPT, ANSWER, apply_chat_template=True)
    full = student_tok.apply_chat_template(msgs + [{"role": "assistant", "content": ANSWER}], tokenize=False)
    assert full.endswith("<|im_end|>\n")
    assert p_ids + r_ids == ids_of(student_tok, full)  # the template's own tokens, its closing "\n" included
    upstream = ids_of(student_tok, full.rstrip("\n"))  # OpenRLHF strips the trailing newline
    assert upstream == (p_ids + r_ids)[:-1] and upstream[-1] == student_tok.eos_token_id


def test_kept_a_cut_response_gets_no_forced_eos(student_tok):
    from openrlhf.config.schema import DataConfig
    from openrlhf.datasets.preference_dataset import PreferenceDataset
    from openrlhf.datasets.templates import PromptRenderer

    rows = pref_rows(1)
    renderer = PromptRenderer(student_tok, apply_chat_template=True)
    p_ids, c_ids = renderer.tokenize(rows[0]["prompt"], rows[0]["chosen"])
    max_len = len(p_ids) + 3  # room for 3 answer tokens: the answer is cut
    assert len(c_ids) > 3
    item = PreferenceDataset(
        rows, student_tok, DataConfig(apply_chat_template=True, prompt_key="prompt", max_len=max_len), "p.jsonl"
    )[0]
    assert item["chosen_ids"] == c_ids[:3] and item["chosen_truncated"]
    assert item["chosen_ids"][-1] != student_tok.eos_token_id  # OpenRLHF would overwrite it with EOS


def test_matched_prompts_of_max_len_minus_2_tokens_are_dropped(student_tok):
    from openrlhf.config.schema import DataConfig
    from openrlhf.datasets.preference_dataset import PreferenceDataset
    from openrlhf.datasets.sft_dataset import SFTDataset
    from openrlhf.datasets.templates import PromptRenderer
    from openrlhf.utils.errors import DataError

    rows = pref_rows(1)
    n = len(PromptRenderer(student_tok, apply_chat_template=True).tokenize(rows[0]["prompt"], rows[0]["chosen"])[0])
    cfg = lambda m: DataConfig(apply_chat_template=True, prompt_key="prompt", max_len=m)  # noqa: E731
    assert len(PreferenceDataset(rows, student_tok, cfg(n + 3), "p.jsonl")) == 1
    with pytest.raises(DataError, match=r"dropped 1 whose prompt alone has >= max_len - 2 tokens"):
        PreferenceDataset(rows, student_tok, cfg(n + 2), "p.jsonl")
    sft = [{"prompt": rows[0]["prompt"], "output": rows[0]["chosen"]}]
    scfg = lambda m: DataConfig(apply_chat_template=True, input_key="prompt", output_key="output", max_len=m)  # noqa: E731
    assert len(SFTDataset(sft, student_tok, scfg(n + 3), "s.jsonl")) == 1
    with pytest.raises(DataError, match=r"dropped 1 whose prompt"):
        SFTDataset(sft, student_tok, scfg(n + 2), "s.jsonl")


def test_kept_hh_whole_texts_split_after_the_last_shared_assistant_turn():
    from openrlhf.datasets.templates import split_shared_prefix

    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Paris."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Lyon, I think."
    prompt, c, r = split_shared_prefix(chosen, rejected)
    # OpenRLHF (no prompt key): prompt "" and every token of the whole text scored.
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant:"
    assert (c, r) == (" Paris.", " Lyon, I think.")
