"""Data as OpenRLHF reads it: sources mixed by probability, multi-turn SFT, pre-training mode, Anthropic-HH
rows, CSV / Arrow / name@data_dir sources (a truncated Arrow stream refused), and the token-level choices
(docs/from-openrlhf.md: one test per difference)."""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pytest

from openrlhf.config import load_config
from openrlhf.datasets.loading import load_rows
from openrlhf.utils.errors import DataError

from tiny import (
    as_flags,
    base_flags,
    config_problems,
    ids_of,
    pref_rows,
    run_in_process,
    sft_rows,
    train_losses,
    write_jsonl,
)


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
        run_in_process(
            "sft", base_flags(tiny_dir, f"{good},{bad}", str(tmp_path / "o"), "--data.dataset_probs", "0.5", "0.5")
        )


def test_sft_on_two_mixed_sources(tiny_dir, tmp_path, capsys):
    a = write_jsonl(str(tmp_path / "a.jsonl"), sft_rows(4))
    b = write_jsonl(str(tmp_path / "b.jsonl"), sft_rows(8))
    out = str(tmp_path / "mix")
    run_in_process(
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


def _pretrain_flags(model: str, data: str, out: str, extra: dict) -> list:
    """train_sft in pre-training mode on plain texts under ``text``, batches of 2 (no chat template)."""
    flags = base_flags(
        model,
        data,
        out,
        *as_flags({"model.pretrain_mode_enable": None, "data.input_key": "text", "train.batch_size": "2", **extra}),
    )
    flags.remove("--data.apply_chat_template")
    return flags


def test_sft_pretrain_mode_run(tiny_dir, tmp_path):
    data = write_jsonl(
        str(tmp_path / "text.jsonl"),
        [{"text": f"Tell me about {t}. It is nice."} for t in ("the sea", "a fox", "rain", "tea")],
    )
    out = str(tmp_path / "pt")
    run_in_process("sft", _pretrain_flags(tiny_dir, data, out, {"train.max_epochs": "3", "adam.lr": "1e-2"}))
    losses = train_losses(out)
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_pretrain_loss_never_predicts_past_the_end_of_a_text(tiny_dir, tmp_path):
    """OpenRLHF 0.11.2 masks the terminal logit in pre-training mode (before, a text shorter than its batch
    trained its last position to predict padding). Ours was never exposed (the mask is on the predicted
    tokens): the first step's loss over two texts of different lengths in one micro-batch is the token mean of
    each text's own next-token NLL, computed here without padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["Tell me about the sea and the fox and the rain and the tea, please.", "Tea."]
    data = write_jsonl(str(tmp_path / "text.jsonl"), [{"text": t} for t in texts])
    out = str(tmp_path / "pt")
    run_in_process(
        "sft", _pretrain_flags(tiny_dir, data, out, {"train.micro_batch_size": "2", "train.max_epochs": "1"})
    )
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for t in texts:
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        ids = torch.tensor([bos + tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        total -= logp.gather(-1, ids[0, 1:, None]).sum().item()
        count += ids.shape[1] - 1
    assert train_losses(out) == pytest.approx([total / count], abs=1e-5)


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
        *as_flags({"train.batch_size": "4", "train.max_epochs": "3", "model.beta": "0.5", "data.prompt_key": ""}),
    )
    flags.remove("--data.apply_chat_template")
    run_in_process("dpo", flags)
    losses = train_losses(out)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3) and losses[-1] < losses[0]


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


def test_name_at_data_dir_behind_a_path(tmp_path, monkeypatch):
    rows = pref_rows(5)
    for sub, part in (("a", rows[:2]), ("b", rows[2:])):
        write_jsonl(str(tmp_path / "multi" / sub / "train.jsonl"), part)
    monkeypatch.chdir(tmp_path)
    # the same source from inside the folder, by a relative path and by an absolute one
    for source in ("multi@b", "./multi@b", str(tmp_path / "multi") + "@b"):
        cfg = load_config(["--model.model_name_or_path", "org/student", "--data.dataset", source], "dpo")
        assert load_rows(cfg.data.dataset) == rows[2:], source
    # a data_dir that is not there, or a folder that is not there, is named
    problems = config_problems(
        ["--model.model_name_or_path", "org/student", "--data.dataset", str(tmp_path / "multi") + "@c"], "dpo"
    )
    assert f"--data.dataset: 'c' is not a folder in {tmp_path / 'multi'} (name@data_dir)" in problems, problems
    problems = config_problems(["--model.model_name_or_path", "org/student", "--data.dataset", "./nothing@b"], "dpo")
    assert "--data.dataset: file or folder not found: ./nothing@b" in problems, problems


def _arrow_stream(rows):
    """The bytes of an Arrow IPC stream of one record batch per row, and the offset after each batch."""
    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    ends = []
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1):
            writer.write_batch(batch)
            ends.append(sink.tell())
    return sink.getvalue().to_pybytes(), ends


def test_truncated_arrow_stream_is_refused(tmp_path):
    rows = pref_rows(4)
    data, ends = _arrow_stream(rows)
    assert len(ends) == 4
    whole = tmp_path / "whole.arrow"
    whole.write_bytes(data)
    assert load_rows(str(whole)) == rows
    # cut after 2 of the 4 batches (a clean message boundary), and in the middle of the third
    for name, cut in (("cut.arrow", ends[1]), ("torn.arrow", ends[1] + (ends[2] - ends[1]) // 2)):
        path = tmp_path / name
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match="^" + re.escape(f"--data.dataset {path}: the Arrow stream is truncated")):
            load_rows(str(path))
    # the Arrow IPC file format (a footer instead of the end-of-stream marker) still loads
    table = pa.Table.from_pylist(rows)
    as_file = tmp_path / "file.arrow"
    with pa.OSFile(str(as_file), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1):
            writer.write_batch(batch)
    assert load_rows(str(as_file)) == rows
