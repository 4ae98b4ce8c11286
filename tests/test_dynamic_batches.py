"""--train.dynamic_batch_enable with a teacher scored online: the token budget holds for every tokenisation a
micro-batch runs, the teacher's own (another family's tokenizer, whole responses) as well as the policy's."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from openrlhf.config import load_config

from tiny import as_flags, base_flags, make_tiny, pref_rows, train_losses, write_jsonl


@pytest.fixture(scope="module")
def byte_teacher(tmp_path_factory):
    """A teacher of another family whose tokenizer has no merges (one token per byte): it renders every pair
    about twice as long as the tiny student's tokenizer does."""
    return make_tiny(str(tmp_path_factory.mktemp("byte_teacher")), style="gemma", vocab_size=261, seed=2, hidden=32)


def _rendered_lengths(path: str, row: dict) -> int:
    """Tokens of a pair (prompt twice, both answers) in ``path``'s tokenizer and chat template, straight from
    transformers (not the project's rendering)."""
    tok = AutoTokenizer.from_pretrained(path)

    def n(messages, gen):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        return len(tok(text, add_special_tokens=False).input_ids)

    user = [{"role": "user", "content": row["prompt"]}]
    prompt = n(user, True)
    answers = [n(user + [{"role": "assistant", "content": row[k]}], False) - prompt for k in ("chosen", "rejected")]
    return 2 * prompt + sum(answers)


def test_pair_token_counts_are_what_the_collated_batch_holds(tiny_dir, byte_teacher, tmp_path):
    """The counts the budget uses are the real tokens of each tokenisation of the collated batch."""
    from openrlhf.datasets.tokenizer import data_tokenizer
    from openrlhf.recipes.dadpo import dadpo_models
    from openrlhf.recipes.preference import preference_data

    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(8))
    cfg = load_config(
        base_flags(tiny_dir, data, str(tmp_path / "o"), "--teacher.model_name_or_path", byte_teacher), task="dadpo"
    )
    tokenizer = data_tokenizer(tiny_dir, cfg.data)
    pd = preference_data(cfg, tokenizer, dadpo_models(cfg))
    items = [pd.train[i] for i in range(len(pd.train))]
    counts = pd.token_counts(items)
    batch = pd.collate(items)
    b = len(items)
    for k, c in enumerate(counts):
        assert set(c) == {"policy", "teacher"}
        for key, tokens in (("policy", batch.tokens), ("teacher", batch.own["teacher"])):
            mask = tokens.attention_mask
            assert c[key] == int(mask[k].sum() + mask[b + k].sum())
        assert c["teacher"] == _rendered_lengths(byte_teacher, pref_rows(8)[k])
        assert c["teacher"] > c["policy"]


def test_dynamic_micro_batches_keep_the_teachers_tokens_within_the_budget(
    tiny_dir, byte_teacher, tmp_path, monkeypatch, capsys
):
    """A budget of 240 tokens: the policy's tokens of two or three pairs fit it, the teacher's (about twice as
    many) of two at most. Every micro-batch's teacher forward stays within it (counting only the policy's
    tokens, as before, gave micro-batches whose teacher forward had up to 1.7x the budget); a pair whose teacher
    rendering alone is over the budget trains alone and is said before training. The loss curve is that of
    fixed micro-batches."""
    from openrlhf.recipes.dadpo import train_dadpo
    from openrlhf.trainer.preference_trainer import PreferenceTrainer

    rows = pref_rows(8)
    rows[3]["chosen"] += " The quick brown fox jumps over the lazy dog." * 5
    data = write_jsonl(str(tmp_path / "p.jsonl"), rows)
    teacher = [_rendered_lengths(byte_teacher, r) for r in rows]
    policy = [_rendered_lengths(tiny_dir, r) for r in rows]
    budget = 240
    assert max(policy) < budget < max(teacher) and [t > budget for t in teacher].count(True) == 1

    seen = []
    original = PreferenceTrainer._loss_step

    def recording(self, batch):
        teacher = batch.own["teacher"]
        seen.append((batch.rows, int(batch.tokens.attention_mask.sum()), int(teacher.attention_mask.sum())))
        return original(self, batch)

    curves = []
    for extra in ([], ["--train.dynamic_batch_enable", "--train.max_tokens_per_gpu", str(budget)]):
        out = str(tmp_path / f"o{len(curves)}")
        flags = base_flags(
            tiny_dir,
            data,
            out,
            *as_flags(
                {
                    "teacher.model_name_or_path": byte_teacher,
                    "teacher.beta": "0.3",
                    "train.batch_size": "4",
                    "train.micro_batch_size": "2",
                    "train.max_epochs": "2",
                }
            ),
            *extra,
        )
        if extra:
            seen.clear()
            monkeypatch.setattr(PreferenceTrainer, "_loss_step", recording)
            capsys.readouterr()
        train_dadpo(load_config(flags, task="dadpo"))
        curves.append(train_losses(out))
    printed = capsys.readouterr().out
    assert len(curves[0]) == 4
    assert curves[1] == pytest.approx(curves[0], abs=1e-5)
    assert sum(b for b, _, _ in seen) == 16  # every pair of the 4 steps, once
    for b, p, t in seen:
        assert p <= budget
        assert t <= budget or b == 1, (budget, seen)
    assert any(t > budget for b, _, t in seen if b == 1)  # the longest pair alone
    assert any(b >= 2 for b, _, _ in seen)  # pairs still share micro-batches where the teacher's tokens allow
    assert (
        f"warning: --train.max_tokens_per_gpu {budget}: 1 of 8 rows have more tokens (teacher up to {max(teacher)})"
        in printed
    ), printed[-2000:]
