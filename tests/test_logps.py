"""openrlhf/logps/: each frozen model's log-probs reach the loss through one source, in the batch's order."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrlhf.config.schema import DataConfig
from openrlhf.datasets.preference_data import PairSplit, pair_collate
from openrlhf.datasets.preference_dataset import PreferenceDataset
from openrlhf.datasets.templates import PromptRenderer
from openrlhf.logps.choose import choose_sources
from openrlhf.logps.forward import frozen_pair_logps
from openrlhf.logps.frozen import REF_FLAG, TEACHER_FLAG, FrozenModel
from openrlhf.logps.known import CachedTable, WithKnownLogps
from openrlhf.logps.sources import KnownLogps, OnlineLogps
from openrlhf.models.actor import Actor

from tiny import pref_rows


def _dataset(tiny_dir, n=5):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    return tok, PreferenceDataset(pref_rows(n), tok, DataConfig(apply_chat_template=True, max_len=256), "p.jsonl")


def test_known_logps_are_read_in_the_batch_order_and_survive_packing(tiny_dir):
    """Values by row index, collated in a shuffled order: the source gives them in that order, float32 as the
    cached columns are read, on the batch's device, packed or not."""
    tok, ds = _dataset(tiny_dir)
    values = {i: (-10.0 - i - 0.123456789, -20.0 - i) for i in range(5)}
    view = WithKnownLogps(ds, CachedTable({"teacher": values}), ["teacher"])
    order = [3, 0, 4, 1]
    model = FrozenModel("teacher", "t", TEACHER_FLAG)
    for packing in (False, True):
        batch = pair_collate(tok, {}, packing=packing)([view[i] for i in order])
        got = KnownLogps(model).pair_logps(batch.to("cpu"))
        assert got.chosen.dtype == torch.float32
        assert got.chosen.tolist() == torch.tensor([values[i][0] for i in order], dtype=torch.float32).tolist()
        assert got.rejected.tolist() == [values[i][1] for i in order]
        assert batch.indices.tolist() == order and (batch.tokens.seq_index is not None) == packing


def test_online_sources_read_their_own_tokenisation(tiny_dir, tiny_teacher_other_family):
    """The reference reads the policy's tokens; a teacher with a renderer reads its own (``batch.own``), bit for bit
    what its engine gives on that tokenisation."""
    tok, ds = _dataset(tiny_dir, 3)
    t_tok = AutoTokenizer.from_pretrained(tiny_teacher_other_family)
    renderer = PromptRenderer(t_tok, apply_chat_template=True)
    batch = pair_collate(tok, {"teacher": renderer})([ds[i] for i in range(3)])
    ref = Actor(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)).eval()
    teacher = Actor(AutoModelForCausalLM.from_pretrained(tiny_teacher_other_family, dtype=torch.float32)).eval()
    r = OnlineLogps(FrozenModel("ref", tiny_dir, REF_FLAG), ref).pair_logps(batch)
    t = OnlineLogps(FrozenModel("teacher", tiny_teacher_other_family, TEACHER_FLAG, renderer=renderer), teacher)
    got = t.pair_logps(batch)
    want_r = frozen_pair_logps(ref, batch.tokens)
    want_t = frozen_pair_logps(teacher, batch.own["teacher"])
    assert torch.equal(r.chosen, want_r.chosen) and torch.equal(r.rejected, want_r.rejected)
    assert torch.equal(got.chosen, want_t.chosen) and torch.equal(got.rejected, want_t.rejected)
    assert batch.own["teacher"].input_ids.max() < 350 <= len(tok)  # the teacher's vocabulary, not the policy's


def test_choose_sources_keeps_uncached_models_online_and_asks_a_remote_provider_for_them(tiny_dir):
    """No cached columns: every model online; with a remote provider the items carry its values instead."""
    tok, ds = _dataset(tiny_dir, 4)
    split = PairSplit("p.jsonl", "--data.dataset", pref_rows(4), ds, [0, 2, 3], [])
    ref = FrozenModel("ref", tiny_dir, REF_FLAG, max_len=256)
    local = choose_sources(split, [ref], DataConfig(apply_chat_template=True, max_len=256), tiny_dir)
    assert local.online == ["ref"] and local.reports == [] and len(local.dataset) == 3
    assert "logps" not in local.dataset[0]

    class Provider:  # the Ray trainers' provider: values by (name, row index)
        def get(self, name, index):
            return (float(index), -float(index))

    remote = choose_sources(split, [ref], DataConfig(apply_chat_template=True, max_len=256), tiny_dir, Provider())
    assert remote.online == ["ref"]
    assert [remote.dataset[k]["logps"]["ref"] for k in range(3)] == [(0.0, -0.0), (2.0, -2.0), (3.0, -3.0)]
    assert [remote.dataset.row_index(k) for k in range(3)] == [0, 2, 3]
