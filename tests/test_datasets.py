"""Datasets: loading, rendering/tokenization (student and teacher), over-long policy, collate."""

import functools
import json
import os
import subprocess
import sys

import pytest
import torch

from openrlhf.config.schema import DataConfig
from openrlhf.datasets.build import build_dataset
from openrlhf.datasets.loading import DataError, load_rows
from openrlhf.datasets.preference_dataset import PreferenceDataset, pair_batch, preference_collate
from openrlhf.datasets.sft_dataset import SFTDataset, sft_collate
from openrlhf.datasets.templates import PromptRenderer, tokenize_pair

from tiny import ids_of, pref_rows, sft_rows, write_jsonl

PROMPT = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


def chat_cfg(**kw):
    return DataConfig(apply_chat_template=True, **kw)


# --------------------------------------------------------------------------- rendering


def test_chat_template_response_tokens_are_full_minus_prompt(student_tok):
    p_ids, r_ids = tokenize_pair(student_tok, PROMPT, ANSWER, apply_chat_template=True)
    msgs = [{"role": "user", "content": PROMPT}]
    prompt_text = student_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full_text = student_tok.apply_chat_template(msgs + [{"role": "assistant", "content": ANSWER}], tokenize=False)
    full = ids_of(student_tok, full_text)
    assert p_ids == ids_of(student_tok, prompt_text)
    assert p_ids + r_ids == full
    assert r_ids == full[len(p_ids) :]
    im_end = student_tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in r_ids and r_ids[-2] == im_end  # end-of-turn then the template's "\n"
    assert student_tok.decode(r_ids) == ANSWER + "<|im_end|>\n"
    assert student_tok.decode(p_ids).endswith("<|im_start|>assistant\n")


def test_renderer_texts(student_tok):
    r = PromptRenderer(student_tok, apply_chat_template=True)
    prompt_text, full_text = r.render(PROMPT, ANSWER)
    assert prompt_text == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert full_text == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    assert r.render_prompt(PROMPT) == prompt_text


def test_input_template_path_appends_eos(student_tok):
    template = "User: {}\nAssistant: "
    p_ids, r_ids = tokenize_pair(student_tok, PROMPT, ANSWER, apply_chat_template=False, input_template=template)
    assert p_ids == ids_of(student_tok, template.format(PROMPT))  # no BOS: this tokenizer has none
    assert r_ids[-1] == student_tok.eos_token_id
    assert r_ids[:-1] == ids_of(student_tok, ANSWER)
    assert student_tok.decode(r_ids) == ANSWER + student_tok.eos_token
    # No template at all: the prompt text is the prompt itself.
    p2, _ = tokenize_pair(student_tok, PROMPT, ANSWER, apply_chat_template=False)
    assert p2 == ids_of(student_tok, PROMPT)
    # An answer already ending with EOS does not get a second one.
    _, r3 = tokenize_pair(student_tok, PROMPT, ANSWER + student_tok.eos_token, apply_chat_template=False)
    assert r3 == r_ids


def test_plain_path_prepends_bos_when_tokenizer_has_one(other_family_tok):
    p_ids, r_ids = tokenize_pair(
        other_family_tok, PROMPT, ANSWER, apply_chat_template=False, input_template="Q: {}\nA: "
    )
    assert other_family_tok.bos_token_id is not None
    assert p_ids[0] == other_family_tok.bos_token_id
    assert p_ids[1:] == ids_of(other_family_tok, f"Q: {PROMPT}\nA: ")
    assert r_ids[-1] == other_family_tok.eos_token_id
    # With the chat template, the template writes BOS itself: exactly one.
    p_chat, _ = tokenize_pair(other_family_tok, PROMPT, ANSWER, apply_chat_template=True)
    assert p_chat[0] == other_family_tok.bos_token_id and p_chat.count(other_family_tok.bos_token_id) == 1


def test_other_family_gets_its_own_ids(student_tok, other_family_tok):
    s_p, s_r = tokenize_pair(student_tok, PROMPT, ANSWER, apply_chat_template=True)
    t_p, t_r = tokenize_pair(other_family_tok, PROMPT, ANSWER, apply_chat_template=True)
    assert (t_p, t_r) != (s_p, s_r)
    assert other_family_tok.decode(t_r) == ANSWER + "<end_of_turn>\n"
    assert other_family_tok.decode(t_p).startswith("<bos><start_of_turn>user\n")
    assert other_family_tok.decode(t_p).endswith("<start_of_turn>model\n")
    full = ids_of(
        other_family_tok,
        other_family_tok.apply_chat_template(
            [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}], tokenize=False
        ),
    )
    assert t_p + t_r == full


def test_teacher_retokenizes_preference_items(student_tok, other_family_tok):
    ds = PreferenceDataset(pref_rows(4), student_tok, chat_cfg(max_len=512), "pref")
    items = [ds[i] for i in range(2)]
    renderer = PromptRenderer(other_family_tok, apply_chat_template=True)
    tb = pair_batch(
        renderer,
        [it["prompt"] for it in items],
        [it["chosen"] for it in items],
        [it["rejected"] for it in items],
        other_family_tok.pad_token_id,
    )
    sb = preference_collate(items, student_tok.pad_token_id).tokens
    assert tb.input_ids.shape[0] == sb.input_ids.shape[0] == 4
    for row, (it, side) in enumerate(
        [(items[0], "chosen"), (items[1], "chosen"), (items[0], "rejected"), (items[1], "rejected")]
    ):
        t_p, t_r = tokenize_pair(other_family_tok, it["prompt"], it[side], apply_chat_template=True)
        n = len(t_p) + len(t_r)
        assert tb.input_ids[row, :n].tolist() == t_p + t_r
        assert tb.loss_mask[row].nonzero().flatten().tolist() == list(range(len(t_p), n))
        answer = tb.input_ids[row][tb.loss_mask[row]].tolist()
        assert other_family_tok.decode(answer) == it[side] + "<end_of_turn>\n"
    # The collate can add the teacher's view to the student's batch.
    both = preference_collate(items, student_tok.pad_token_id, teacher_renderers={"teacher": renderer})
    assert torch.equal(both.tokens.input_ids, sb.input_ids) and list(both.own) == ["teacher"]
    for k in ("input_ids", "attention_mask", "loss_mask", "prompt_lens"):
        assert torch.equal(getattr(both.own["teacher"], k), getattr(tb, k))
    assert not torch.equal(both.own["teacher"].input_ids[:, :5], sb.input_ids[:, :5])


def test_tokenizer_chat_template_override(student_tok, other_family_tok):
    override = other_family_tok.chat_template
    cfg = chat_cfg(tokenizer_chat_template=override, max_len=512)
    r = PromptRenderer.from_data_config(student_tok, cfg)
    prompt_text, full_text = r.render(PROMPT, ANSWER)
    assert prompt_text.startswith("<bos><start_of_turn>user\n") and full_text.endswith("<end_of_turn>\n")
    assert "<|im_start|>" not in full_text
    assert student_tok.chat_template != override  # the tokenizer itself is left alone


def test_apply_chat_template_without_template_names_flag_and_model(no_template_tok, tiny_no_template):
    with pytest.raises(DataError) as e:
        PromptRenderer(no_template_tok, apply_chat_template=True, model_path=tiny_no_template)
    assert "--data.apply_chat_template" in str(e.value) and tiny_no_template in str(e.value)
    with pytest.raises(DataError, match="--data.apply_chat_template"):
        SFTDataset(sft_rows(2), no_template_tok, chat_cfg(), "sft.jsonl")
    # ... but a template given on the command line makes it work.
    from tiny import CHATML_TEMPLATE

    ds = SFTDataset(sft_rows(2), no_template_tok, chat_cfg(tokenizer_chat_template=CHATML_TEMPLATE), "sft.jsonl")
    assert len(ds) == 2


def test_template_whose_answer_render_differs_from_generation_prompt(student_tok):
    # The generation prompt says "assistant" but answers are rendered as "bot".
    odd = (
        "{% for m in messages %}{{ '<|im_start|>' + ('bot' if m['role'] == 'assistant' else m['role']) + '\\n' "
        "+ m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(DataError, match=r"odd\.jsonl, row 1: .*does not start with the prompt"):
        SFTDataset(sft_rows(2), student_tok, chat_cfg(tokenizer_chat_template=odd), "odd.jsonl")


def test_bad_input_template_and_both_modes(student_tok):
    with pytest.raises(DataError, match="--data.input_template"):
        PromptRenderer(student_tok, input_template="no placeholder")
    with pytest.raises(DataError, match="--data.input_template"):
        PromptRenderer(student_tok, input_template="{name}: {}")
    with pytest.raises(DataError, match="only one"):
        PromptRenderer(student_tok, apply_chat_template=True, input_template="User: {}")


# --------------------------------------------------------------------------- message lists


def test_message_list_forms_give_same_ids(student_tok):
    user = {"role": "user", "content": PROMPT}
    asst = {"role": "assistant", "content": ANSWER}
    base = tokenize_pair(student_tok, PROMPT, ANSWER, apply_chat_template=True)
    assert tokenize_pair(student_tok, [user], [asst], apply_chat_template=True) == base
    assert tokenize_pair(student_tok, [user], ANSWER, apply_chat_template=True) == base
    assert tokenize_pair(student_tok, None, [user, asst], apply_chat_template=True) == base
    assert tokenize_pair(student_tok, PROMPT, [user, asst], apply_chat_template=True) == base  # matching prompt


def test_preference_full_conversations_without_prompt_key(student_tok):
    rows = [
        {
            "chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
            "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
        }
        for p, c, r in [(x["prompt"], x["chosen"], x["rejected"]) for x in pref_rows(3)]
    ]
    ds = PreferenceDataset(rows, student_tok, chat_cfg(max_len=512), "conv.jsonl")
    ref = PreferenceDataset(pref_rows(3), student_tok, chat_cfg(max_len=512), "str.jsonl")
    for a, b in zip(ds, ref, strict=True):
        assert (a["prompt_ids"], a["chosen_ids"], a["rejected_ids"]) == (
            b["prompt_ids"],
            b["chosen_ids"],
            b["rejected_ids"],
        )
    assert ds[0]["prompt"] == [{"role": "user", "content": pref_rows(1)[0]["prompt"]}]
    assert ds[0]["chosen"]["role"] == "assistant"
    # A teacher re-tokenizing the kept raw values gets the same as from the strings.
    assert tokenize_pair(student_tok, ds[0]["prompt"], ds[0]["chosen"], apply_chat_template=True) == (
        ref[0]["prompt_ids"],
        ref[0]["chosen_ids"],
    )


def test_preference_conversation_prefix_mismatch(student_tok):
    row = {
        "chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "B?"}, {"role": "assistant", "content": "b"}],
    }
    with pytest.raises(DataError, match=r"conv\.jsonl, row 1: .*differ between 'chosen' and 'rejected'"):
        PreferenceDataset([row], student_tok, chat_cfg(), "conv.jsonl")
    row2 = {"prompt": "C?", "chosen": row["chosen"], "rejected": "c"}
    with pytest.raises(DataError, match="does not match"):
        PreferenceDataset([row2], student_tok, chat_cfg(), "conv.jsonl")


def test_multiturn_prompt_messages(student_tok):
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": PROMPT},
    ]
    p_ids, r_ids = tokenize_pair(student_tok, prompt, ANSWER, apply_chat_template=True)
    text = student_tok.decode(p_ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    assert student_tok.decode(r_ids) == ANSWER + "<|im_end|>\n"
    # Without a chat template a conversation cannot be rendered.
    with pytest.raises(DataError, match="--data.apply_chat_template"):
        tokenize_pair(student_tok, prompt, ANSWER, apply_chat_template=False)


def test_message_missing_content_names_row_and_key(student_tok):
    rows = pref_rows(2)
    rows[1]["prompt"] = [{"role": "user", "text": "hi"}]
    with pytest.raises(DataError) as e:
        PreferenceDataset(rows, student_tok, chat_cfg(), "p.jsonl")
    msg = str(e.value)
    assert "p.jsonl, row 2" in msg and "'prompt'" in msg and "'content'" in msg


def test_sft_conversation_under_input_key(student_tok):
    rows = [
        {"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]},
    ]
    ds = SFTDataset(rows, student_tok, chat_cfg(input_key="messages", max_len=512), "conv.jsonl")
    p_ids, r_ids = tokenize_pair(student_tok, PROMPT, ANSWER, apply_chat_template=True)
    it = ds[0]
    assert it["input_ids"].tolist() == p_ids + r_ids
    assert it["prompt_len"] == len(p_ids)
    bad = [
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "y"},
                {"role": "user", "content": "z"},
            ]
        }
    ]
    with pytest.raises(DataError, match="last message must be the 'assistant'"):
        SFTDataset(bad, student_tok, chat_cfg(input_key="messages"), "conv.jsonl")


# --------------------------------------------------------------------------- SFT / preference datasets


def test_sft_loss_mask_only_on_response(student_tok):
    ds = SFTDataset(sft_rows(4), student_tok, chat_cfg(max_len=512), "sft")
    for i, it in enumerate(ds):
        p_ids, r_ids = tokenize_pair(
            student_tok, sft_rows(4)[i]["input"], sft_rows(4)[i]["output"], apply_chat_template=True
        )
        assert it["input_ids"].dtype == torch.long and it["loss_mask"].dtype == torch.bool
        assert it["input_ids"].tolist() == p_ids + r_ids
        assert not it["loss_mask"][: len(p_ids)].any()
        assert it["loss_mask"][len(p_ids) :].all()
        answer = it["input_ids"][it["loss_mask"]].tolist()
        assert student_tok.decode(answer) == sft_rows(4)[i]["output"] + "<|im_end|>\n"
    assert ds.stats == dict(rows=4, kept=4, dropped_prompt_too_long=0, dropped_empty_response=0, truncated_response=0)


def test_sft_over_long_truncates_and_drops(student_tok):
    rows = sft_rows(8)
    lens = [len(tokenize_pair(student_tok, r["input"], r["output"], apply_chat_template=True)[0]) for r in rows]
    max_len = sorted(lens)[len(lens) // 2] + 3  # about half the prompts fit
    ds = SFTDataset(rows, student_tok, chat_cfg(max_len=max_len), "sft.jsonl")
    dropped = sum(n >= max_len - 2 for n in lens)  # OpenRLHF's rule: room for 3 response tokens at least
    assert 0 < dropped < 8
    assert ds.stats["dropped_prompt_too_long"] == dropped
    assert ds.stats["kept"] == len(ds) == 8 - dropped
    assert ds.rows_kept_indices == [i for i, n in enumerate(lens) if n < max_len - 2]
    assert ds.stats["truncated_response"] == len(ds)  # a budget of a few tokens: every response is cut
    for it in ds:
        assert len(it["input_ids"]) == max_len and it["loss_mask"].sum() == max_len - it["prompt_len"]
    rep = ds.report()
    assert f"dropped {dropped}" in rep and f"truncated the response of {len(ds)} rows" in rep and "sft.jsonl" in rep


def test_preference_over_long_truncates_and_drops(student_tok):
    rows = pref_rows(8)
    renderer = PromptRenderer(student_tok, apply_chat_template=True)
    toks = [(renderer.tokenize(r["prompt"], r["chosen"]), renderer.tokenize(r["prompt"], r["rejected"])) for r in rows]
    p_lens = [len(c[0]) for c, _ in toks]
    max_len = max(p_lens) + 3  # the longest prompt leaves room for 3 response tokens: kept
    ds = PreferenceDataset(rows, student_tok, chat_cfg(max_len=max_len), "pref.jsonl")
    assert ds.stats["dropped_prompt_too_long"] == 0
    n_c = sum(len(c[0]) + len(c[1]) > max_len for c, _ in toks)
    n_r = sum(len(r[0]) + len(r[1]) > max_len for _, r in toks)
    n_any = sum(len(c[0]) + max(len(c[1]), len(r[1])) > max_len for c, r in toks)
    assert n_c > 0
    assert (ds.stats["truncated_chosen"], ds.stats["truncated_rejected"], ds.stats["truncated_response"]) == (
        n_c,
        n_r,
        n_any,
    )
    for it in ds:
        assert len(it["prompt_ids"]) + len(it["chosen_ids"]) <= max_len
        assert len(it["prompt_ids"]) + len(it["rejected_ids"]) <= max_len
        full_c = toks[it["index"]][0][1]
        assert it["chosen_ids"] == full_c[: len(it["chosen_ids"])]
        assert it["chosen_truncated"] == (len(full_c) > len(it["chosen_ids"]))
    # Now drop the rows with the longest prompts.
    ds2 = PreferenceDataset(rows, student_tok, chat_cfg(max_len=max(p_lens) + 2), "pref.jsonl")
    n_drop = sum(n >= max(p_lens) for n in p_lens)  # >= max_len - 2 (OpenRLHF's rule)
    assert ds2.stats["dropped_prompt_too_long"] == n_drop and len(ds2) == 8 - n_drop
    assert all(p_lens[i] < max(p_lens) for i in ds2.rows_kept_indices)
    assert [it["index"] for it in ds2] == ds2.rows_kept_indices
    assert f"dropped {n_drop} whose prompt" in ds2.report()


def test_all_rows_dropped_is_an_error(student_tok):
    with pytest.raises(DataError, match="no rows left"):
        PreferenceDataset(pref_rows(2), student_tok, chat_cfg(max_len=3), "pref.jsonl")


def test_preference_item_keys(student_tok):
    ds = PreferenceDataset(pref_rows(3), student_tok, chat_cfg(max_len=512), "pref")
    it = ds[1]
    assert set(it) >= {"prompt_ids", "chosen_ids", "rejected_ids", "prompt", "chosen", "rejected", "index"}
    assert it["prompt"] == pref_rows(3)[1]["prompt"] and it["rejected"] == pref_rows(3)[1]["rejected"]
    assert it["index"] == 1
    assert student_tok.decode(it["rejected_ids"]) == pref_rows(3)[1]["rejected"] + "<|im_end|>\n"


def test_missing_keys_name_file_row_key_and_count(student_tok):
    rows = pref_rows(9)
    for i in (1, 3, 4, 5, 6, 7, 8):
        del rows[i]["rejected"]
    with pytest.raises(DataError) as e:
        PreferenceDataset(rows, student_tok, chat_cfg(), "/data/pref.jsonl")
    msg = str(e.value)
    assert "/data/pref.jsonl" in msg and "7 problem(s)" in msg
    assert "row 2: missing key 'rejected'" in msg and "row 4:" in msg
    assert "and 2 more" in msg  # first five shown
    rows = sft_rows(2)
    del rows[1]["output"]
    with pytest.raises(DataError, match=r"sft\.jsonl, row 2: missing key 'output'"):
        SFTDataset(rows, student_tok, chat_cfg(), "sft.jsonl")


def test_wrong_type_names_row_and_key(student_tok):
    rows = pref_rows(3)
    rows[2]["chosen"] = 5
    with pytest.raises(DataError, match=r"p\.jsonl, row 3: key 'chosen' is a int"):
        PreferenceDataset(rows, student_tok, chat_cfg(), "p.jsonl")
    rows = sft_rows(2)
    rows[0]["input"] = {"a": 1}
    with pytest.raises(DataError, match=r"row 1: key 'input'"):
        SFTDataset(rows, student_tok, DataConfig(), "s.jsonl")


def test_missing_prompt_with_string_chosen(student_tok):
    rows = [{"chosen": "a", "rejected": "b"}]
    with pytest.raises(DataError, match=r"row 1: missing key 'prompt'"):
        PreferenceDataset(rows, student_tok, chat_cfg(), "p.jsonl")


# --------------------------------------------------------------------------- collate


def test_sft_collate_right_pads(student_tok):
    ds = SFTDataset(sft_rows(3), student_tok, chat_cfg(max_len=512), "sft")
    items = [ds[0], ds[1], ds[2]]
    batch = sft_collate(items, pad_id=student_tok.pad_token_id)
    b = batch.tokens
    assert batch.indices.tolist() == [it["index"] for it in items]
    lens = [len(it["input_ids"]) for it in items]
    B, T = b.input_ids.shape
    assert (B, T) == (3, max(lens))
    assert b.attention_mask.shape == b.loss_mask.shape == (3, T)
    for i, it in enumerate(items):
        n = lens[i]
        assert b.input_ids[i, :n].tolist() == it["input_ids"].tolist()
        assert (b.input_ids[i, n:] == student_tok.pad_token_id).all()
        assert b.attention_mask[i].tolist() == [1] * n + [0] * (T - n)
        assert b.loss_mask[i, :n].tolist() == it["loss_mask"].tolist()
        assert not b.loss_mask[i, n:].any()
    assert b.prompt_lens.tolist() == [it["prompt_len"] for it in items]


def test_preference_collate_chosen_then_rejected(student_tok):
    ds = PreferenceDataset(pref_rows(3), student_tok, chat_cfg(max_len=512), "pref")
    items = [ds[2], ds[0], ds[1]]
    batch = preference_collate(items, pad_id=99)
    b = batch.tokens
    B = 3
    seqs = [it["prompt_ids"] + it["chosen_ids"] for it in items] + [
        it["prompt_ids"] + it["rejected_ids"] for it in items
    ]
    T = max(len(s) for s in seqs)
    assert b.input_ids.shape == b.attention_mask.shape == b.loss_mask.shape == (2 * B, T)
    assert batch.indices.tolist() == [2, 0, 1] and batch.rows == 3
    assert b.prompt_lens.tolist() == [len(it["prompt_ids"]) for it in items] * 2
    for row, s in enumerate(seqs):
        p = len(items[row % B]["prompt_ids"])
        assert b.input_ids[row, : len(s)].tolist() == s
        assert (b.input_ids[row, len(s) :] == 99).all()
        assert b.attention_mask[row].sum() == len(s)
        assert b.loss_mask[row].nonzero().flatten().tolist() == list(range(p, len(s)))
    assert batch.chosen == [it["chosen"] for it in items] and batch.rejected == [it["rejected"] for it in items]


def test_dataloader_with_collate(student_tok):
    from torch.utils.data import DataLoader

    ds = PreferenceDataset(pref_rows(5), student_tok, chat_cfg(max_len=512), "pref")
    dl = DataLoader(
        ds,
        batch_size=2,
        shuffle=False,
        collate_fn=functools.partial(preference_collate, pad_id=student_tok.pad_token_id),
    )
    shapes = [b.tokens.input_ids.shape[0] for b in dl]
    assert shapes == [4, 4, 2]


# --------------------------------------------------------------------------- loading


def test_load_jsonl_and_max_samples(pref_jsonl):
    rows = load_rows(pref_jsonl)
    assert rows == pref_rows(8)
    assert load_rows(pref_jsonl, max_samples=3) == pref_rows(3)


def test_load_json_list_and_json_lines(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(pref_rows(4)))
    assert load_rows(str(p)) == pref_rows(4)
    q = tmp_path / "b.json"
    q.write_text("\n".join(json.dumps(r) for r in pref_rows(3)) + "\n")
    assert load_rows(str(q)) == pref_rows(3)


def test_load_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.Table.from_pylist(pref_rows(5)), path)
    assert load_rows(path) == pref_rows(5)
    assert load_rows(path, max_samples=2) == pref_rows(2)


def test_load_save_to_disk_dataset_and_dict(tmp_path):
    import datasets

    one = str(tmp_path / "one")
    datasets.Dataset.from_list(pref_rows(4)).save_to_disk(one)
    assert load_rows(one) == pref_rows(4)
    dd = str(tmp_path / "dd")
    datasets.DatasetDict(
        train=datasets.Dataset.from_list(pref_rows(6)), test=datasets.Dataset.from_list(pref_rows(2))
    ).save_to_disk(dd)
    assert load_rows(dd, split="train") == pref_rows(6)
    assert load_rows(dd, split="test") == pref_rows(2)
    assert load_rows(dd, split="train", max_samples=1) == pref_rows(1)
    with pytest.raises(DataError) as e:
        load_rows(dd, split="validation", what="--eval.dataset")
    assert "--eval.dataset" in str(e.value) and "'validation'" in str(e.value)
    assert "['test', 'train']" in str(e.value)


def test_load_folder_of_files(tmp_path):
    folder = tmp_path / "data"
    write_jsonl(str(folder / "train.jsonl"), pref_rows(3))
    write_jsonl(str(folder / "test.jsonl"), pref_rows(1))
    assert load_rows(str(folder), split="train") == pref_rows(3)
    assert load_rows(str(folder), split="test") == pref_rows(1)
    with pytest.raises(DataError, match="available splits"):
        load_rows(str(folder), split="dev")
    plain = tmp_path / "plain"
    write_jsonl(str(plain / "part1.jsonl"), pref_rows(2))
    write_jsonl(str(plain / "part2.jsonl"), pref_rows(3)[2:])
    assert load_rows(str(plain)) == pref_rows(3)


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match=r"--data.dataset .*nope\.jsonl: file not found"):
        load_rows(str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.jsonl: the file is empty"):
        load_rows(str(empty))
    blank = tmp_path / "blank.json"
    blank.write_text("[]")
    with pytest.raises(DataError, match=r"blank\.json: no rows"):
        load_rows(str(blank))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pref_rows(1)[0]) + "\n" + json.dumps(pref_rows(1)[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3 is not valid JSON"):
        load_rows(str(bad))
    notobj = tmp_path / "list.jsonl"
    notobj.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2 is a JSON list, expected an object"):
        load_rows(str(notobj))
    arr = tmp_path / "arr.json"
    arr.write_text('[{"a": 1}, 3]')
    with pytest.raises(DataError, match=r"arr\.json: row 2 is a JSON int"):
        load_rows(str(arr))
    txt = tmp_path / "x.txt"
    txt.write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rows(str(txt))
    header_only = tmp_path / "x.csv"  # .csv is read (OpenRLHF reads it); a header alone is no data
    header_only.write_text("a,b\n")
    with pytest.raises(DataError, match=r"x\.csv: no rows \(the CSV file holds its header only\)"):
        load_rows(str(header_only))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="holds no"):
        load_rows(str(tmp_path / "emptydir"))
    with pytest.raises(DataError, match="--data.dataset is empty"):
        load_rows("")


# --------------------------------------------------------------------------- build_dataset / imports


def test_build_dataset(student_tok, pref_jsonl, sft_jsonl):
    cfg = chat_cfg(dataset=pref_jsonl, max_len=512)
    ds = build_dataset("preference", cfg, student_tok)
    assert isinstance(ds, PreferenceDataset) and len(ds) == 8 and pref_jsonl in ds.report()
    sft = build_dataset("sft", cfg, student_tok, dataset=sft_jsonl, max_samples=3)
    assert isinstance(sft, SFTDataset) and len(sft) == 3
    with pytest.raises(DataError, match=r"row 1: missing key"):
        build_dataset("sft", cfg, student_tok)  # a preference file read as SFT
    with pytest.raises(ValueError, match="unknown dataset kind"):
        build_dataset("kto", cfg, student_tok)


def test_package_import_is_light():
    """The package itself imports nothing; the prompt renderer (templates.py) needs neither torch nor transformers."""
    code = (
        "import sys, openrlhf.datasets; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules and 'datasets' not in sys.modules; "
        "from openrlhf.datasets.templates import tokenize_pair; from openrlhf.datasets.loading import DataError; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
