"""--ds.packing_samples: the packed layout gives the padded layout's losses (fp32, CPU), and the memory-lean
log-probs give what a plain log_softmax gives, values and gradients."""

from __future__ import annotations

import os

import pytest
import torch

from openrlhf.config import load_config

from tiny import as_flags, base_flags, pref_rows, read_metrics, run_deepspeed, sft_rows, train_losses, write_jsonl


def _rows_of_uneven_length(kind: str):
    rows = pref_rows(8) if kind != "sft" else sft_rows(8)
    for i, r in enumerate(rows):  # responses of very different lengths: lots of padding when padded
        key = "output" if kind == "sft" else "chosen"
        r[key] = r[key] + " and more" * (i * 3)
    return rows


def _run(task, flags):
    from openrlhf.pipeline.tasks import runner_of

    return runner_of(task)(load_config(flags, task=task))


@pytest.mark.parametrize("task", ["sft", "dpo", "dadpo"])
@pytest.mark.parametrize("stage", ["0", "3"])
def test_packed_losses_equal_padded(task, stage, tiny_dir, tiny_teacher_other_family, tmp_path):
    data = write_jsonl(str(tmp_path / "d.jsonl"), _rows_of_uneven_length(task))
    extra = (
        ["--teacher.model_name_or_path", tiny_teacher_other_family, "--teacher.beta", "0.3"] if task == "dadpo" else []
    )
    losses = {}
    for packing in ("false", "true"):
        out = str(tmp_path / f"p{packing}")
        flags = base_flags(
            tiny_dir,
            data,
            out,
            *as_flags(
                {
                    "train.batch_size": "4",
                    "train.micro_batch_size": "2",
                    "train.max_epochs": "2",
                    "ds.packing_samples": packing,
                }
            ),
            *extra,
        )
        flags[flags.index("--ds.zero_stage") + 1] = stage
        _run(task, flags)
        losses[packing] = read_metrics(out)
    assert len(losses["true"]) == 4
    for key in ("loss", "chosen_reward", "teacher_chosen_reward", "nll_loss"):
        if key in losses["false"][0]:
            assert [r[key] for r in losses["true"]] == pytest.approx([r[key] for r in losses["false"]], abs=1e-5)


def test_packing_is_refused_where_it_is_not_supported(tiny_dir, tmp_path):
    from openrlhf.config import ConfigError

    data = write_jsonl(str(tmp_path / "d.jsonl"), pref_rows(4))
    with pytest.raises(ConfigError, match="--ds.packing_samples: not supported yet"):
        load_config(
            base_flags(tiny_dir, data, str(tmp_path / "o"), "--ds.packing_samples", "--train.micro_batch_size", "2"),
            "kto",
        )


def test_selected_logps_match_log_softmax_values_and_gradients():
    from openrlhf.models.actor import selected_logps

    torch.manual_seed(0)
    logits = torch.randn(37, 50, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (37,))
    weights = torch.randn(37, dtype=torch.float64)
    ours = selected_logps(logits, labels, chunk=8)  # chunks of 8 rows: the last one partial
    ref = torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    (g_ours,) = torch.autograd.grad((ours.double() * weights).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def test_selected_logps_default_chunk_follows_the_vocabulary(monkeypatch):
    from openrlhf.models import actor

    seen = []
    real_apply = actor._SelectedLogps.apply
    monkeypatch.setattr(
        actor._SelectedLogps, "apply", lambda lg, lb, chunk: seen.append(chunk) or real_apply(lg, lb, chunk)
    )
    monkeypatch.setattr(actor, "CHUNK_ELEMENTS", 150)
    logits = torch.randn(7, 50, dtype=torch.float64)
    labels = torch.randint(0, 50, (7,))
    ours = actor.selected_logps(logits, labels)
    assert seen == [3]  # 150 elements / 50 per row
    assert torch.allclose(ours.double(), torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1))
    actor.selected_logps(torch.randn(2, 400), torch.tensor([1, 2]))
    assert seen[-1] == 1  # a row wider than the budget still runs, one row at a time


def test_packed_batch_layout_and_sequence_sums(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openrlhf.config.schema import DataConfig
    from openrlhf.datasets.preference_dataset import PreferenceDataset, preference_collate
    from openrlhf.models.actor import masked_token_logps, sequence_sums

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ds = PreferenceDataset(_rows_of_uneven_length("dpo")[:3], tok, DataConfig(apply_chat_template=True))
    padded = preference_collate([ds[i] for i in range(3)], tok.pad_token_id).tokens
    packed = padded.packed()
    lengths = padded.attention_mask.sum(-1)
    assert packed.input_ids.shape == (1, int(lengths.sum())) and packed.n_seqs == 6 and packed.attention_mask is None
    assert packed.position_ids[0, : int(lengths[0]) + 1].tolist() == list(range(int(lengths[0]))) + [0]
    assert packed.real_and_padded() == (int(lengths.sum()),) * 2
    assert padded.real_and_padded() == (int(lengths.sum()), padded.input_ids.numel())
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        a, _ = masked_token_logps(model, padded.input_ids, padded.attention_mask, padded.loss_mask)
        b, _ = masked_token_logps(model, packed.input_ids, None, packed.loss_mask, position_ids=packed.position_ids)
    assert torch.allclose(sequence_sums(a), sequence_sums(b, packed.seq_index, 6), atol=1e-4)


@pytest.mark.both_legs
@pytest.mark.slow
def test_packed_two_processes_zero3_equals_padded(tiny_dir, tiny_teacher_other_family, tmp_path):
    data = write_jsonl(str(tmp_path / "d.jsonl"), _rows_of_uneven_length("dpo") * 2)
    losses = {}
    for packing in ("false", "true"):
        out = str(tmp_path / f"p{packing}")
        flags = base_flags(
            tiny_dir,
            data,
            out,
            *as_flags(
                {
                    "train.batch_size": "8",
                    "train.micro_batch_size": "2",
                    "train.max_epochs": "2",
                    "ds.packing_samples": packing,
                    "teacher.model_name_or_path": tiny_teacher_other_family,
                    "teacher.beta": "0.3",
                }
            ),
        )
        flags[flags.index("--ds.zero_stage") + 1] = "3"
        run_deepspeed("openrlhf.cli.train_dadpo", flags)
        losses[packing] = train_losses(out)
    assert len(losses["true"]) == 4
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)


FORWARD_LOG = """
import functools
import os

if os.environ.get("RANK") is not None and os.environ.get("FORWARD_LOG_DIR"):
    from transformers.models.llama import modeling_llama

    _forward = modeling_llama.LlamaModel.forward

    @functools.wraps(_forward)
    def forward(self, *args, **kwargs):
        pos = kwargs.get("position_ids")
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        seqs = int((pos == 0).sum()) if pos is not None else ids.shape[0]
        with open(os.path.join(os.environ["FORWARD_LOG_DIR"], "rank" + os.environ["RANK"] + ".txt"), "a") as f:
            f.write(f"{self.config.vocab_size} {seqs} {ids.shape[-1]}\\n")
        return _forward(self, *args, **kwargs)

    modeling_llama.LlamaModel.forward = forward
"""


@pytest.mark.main_leg
@pytest.mark.slow
def test_zero3_packing_with_dynamic_batches_runs_the_same_forwards_on_every_rank(tmp_path):
    """ZeRO-3 gathers each layer's parameters in every forward, collectively: every rank must run the same
    forwards in the same order. Dynamic batches give the ranks micro-batches with different numbers of
    sequences; a packed row is therefore one forward per model under ZeRO-3 (not one per sequence). Models
    large enough that ZeRO-3 partitions their weights (a 1e5-element persistence threshold keeps tiny
    ones whole, and then no forward communicates); a teacher of another family; lengths 1x to 9x. Each
    rank logs its forwards (vocabulary, sequences, tokens); the losses equal the padded run's."""
    from tiny import launch_env, make_tiny

    student = make_tiny(str(tmp_path / "student"), hidden=320)
    teacher = make_tiny(str(tmp_path / "teacher"), style="gemma", vocab_size=350, seed=2, hidden=320)
    rows = pref_rows(8)
    for i, r in enumerate(rows):  # 1x .. 9x
        r["chosen"] = r["chosen"] + " and more" * (i * 4)
    data = write_jsonl(str(tmp_path / "d.jsonl"), rows)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FORWARD_LOG)
    losses, logs = {}, {}
    for packing in ("false", "true"):
        out, log = tmp_path / f"p{packing}", tmp_path / f"log{packing}"
        log.mkdir()
        flags = base_flags(
            str(student),
            data,
            str(out),
            *as_flags(
                {
                    "train.batch_size": "8",
                    "train.max_epochs": "2",
                    "ds.packing_samples": packing,
                    "teacher.model_name_or_path": str(teacher),
                    "teacher.beta": "0.3",
                    "train.dynamic_batch_enable": None,
                    "train.max_tokens_per_gpu": "320",
                }
            ),
        )
        flags[flags.index("--ds.zero_stage") + 1] = "3"
        env = launch_env(FORWARD_LOG_DIR=str(log))
        env["PYTHONPATH"] = str(tmp_path / "site") + os.pathsep + env["PYTHONPATH"]
        run_deepspeed("openrlhf.cli.train_dadpo", flags, timeout=400, env=env)
        losses[packing] = train_losses(str(out))
        logs[packing] = [[line.split() for line in open(log / f"rank{r}.txt")] for r in (0, 1)]
    assert len(losses["true"]) == 2
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)
    r0, r1 = logs["true"]
    assert [v for v, _, _ in r0] == [v for v, _, _ in r1]  # the same forwards, model by model, in order
    assert {v for v, _, _ in r0} == {"400", "350"}
    # one forward per model and micro-batch (policy, reference, teacher), although the ranks' packed rows
    # held different numbers of sequences (one forward per sequence made rank 0 run 5 policy forwards
    # to rank 1's 4 in the first step here, and the run hung)
    assert [v for v, _, _ in r0] == ["400", "400", "350"] * (len(r0) // 3)
    assert sum(int(n) for v, n, _ in r0 if v == "350") == sum(int(n) for v, n, _ in r1 if v == "350") == 2 * 8
    assert any(a[1] != b[1] for a, b in zip(r0, r1, strict=True)), (r0, r1)
