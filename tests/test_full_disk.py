"""A full disk while writing a checkpoint, the final model or generated answers: one line saying so, how much
the write needed and where; what was complete before is kept, and the same command goes on once there is room."""

from __future__ import annotations

import errno
import json
import os

import pytest

from openrlhf.utils.errors import UserError

from tiny import as_flags, base_flags, pref_rows, read_metrics, run_in_process, write_jsonl


def _full(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_is_disk_full_reads_errnos_chains_and_torch_write_failures(monkeypatch, tmp_path):
    from openrlhf.utils import disk

    assert disk.is_disk_full(OSError(errno.ENOSPC, "x")) and disk.is_disk_full(OSError(errno.EDQUOT, "x"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert disk.is_disk_full(outer)
    assert not disk.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    torch_says = RuntimeError("[enforce fail] PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(disk, "free_bytes", lambda path: 10 * 2**20)
    assert disk.is_disk_full(torch_says, str(tmp_path))
    monkeypatch.setattr(disk, "free_bytes", lambda path: 50 * 2**30)  # room left: another write failure
    assert not disk.is_disk_full(torch_says, str(tmp_path))
    assert disk.human(1536) == "1.5 KB" and disk.human(None) == "unknown"


def test_a_checkpoint_that_finds_the_disk_full_keeps_the_last_one_and_resumes(tiny_dir, tmp_path, monkeypatch):
    import deepspeed

    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(8))
    out = str(tmp_path / "run")
    flags = base_flags(
        tiny_dir, data, out, *as_flags({"train.batch_size": "2", "ckpt.save_steps": "2", "ckpt.load_enable": None})
    )
    real = deepspeed.DeepSpeedEngine.save_checkpoint
    calls = []

    def fills_the_disk(self, save_dir, tag=None, **kw):
        calls.append(tag)
        if len(calls) == 2:  # the second checkpoint: part of it written, then no room
            os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
            open(os.path.join(save_dir, tag, "part"), "w").write("x")
            _full()
        return real(self, save_dir, tag=tag, **kw)

    monkeypatch.setattr(deepspeed.DeepSpeedEngine, "save_checkpoint", fills_the_disk)
    ckpts = os.path.join(out, "checkpoints")
    with pytest.raises(UserError) as e:
        run_in_process("dpo", flags)
    msg = str(e.value)
    assert msg.startswith(f"the disk is full: the checkpoint of step 4 in {ckpts} needs about ")
    assert f"the last complete one, {os.path.join(ckpts, 'global_step2')}, is kept" in msg and "\n" not in msg
    left = os.listdir(ckpts)  # the partial checkpoint removed (DeepSpeed's scripts beside them stay)
    assert "global_step2" in left and not [n for n in left if n.startswith(".") or "step4" in n], left
    assert open(os.path.join(ckpts, "latest")).read() == "global_step2"
    monkeypatch.setattr(deepspeed.DeepSpeedEngine, "save_checkpoint", real)  # room again: the same command goes on
    run_in_process("dpo", flags)
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]


def test_the_final_model_and_generated_answers_on_a_full_disk(tiny_dir, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from openrlhf.generation import outputs

    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(4))
    out = str(tmp_path / "run")
    with monkeypatch.context() as m:
        m.setattr(PreTrainedModel, "save_pretrained", _full)
        with pytest.raises(
            UserError, match=r"^the disk is full: the model's weights in .* needs about [0-9.]+ (KB|MB)"
        ):
            run_in_process("dpo", base_flags(tiny_dir, data, out, "--train.batch_size", "2"))
    assert not os.path.exists(os.path.join(out, "model.safetensors"))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp_")]  # no partial copy left

    prompts = write_jsonl(str(tmp_path / "q.jsonl"), [{"id": i, "prompt": f"Question {i}?"} for i in range(4)])
    answers = str(tmp_path / "a.jsonl")
    gen = as_flags(
        {
            "model.model_name_or_path": tiny_dir,
            "data.dataset": prompts,
            "generate.output_path": answers,
            "generate.max_new_tokens": "4",
            "generate.batch_size": "2",
            "ds.param_dtype": "fp32",
        }
    )
    real, calls = outputs.append_jsonl, []

    def second_fills(path, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            _full()
        return real(path, rows)

    monkeypatch.setattr(outputs, "append_jsonl", second_fills)
    with pytest.raises(UserError, match=r"^the disk is full: --generate.output_path \(2 answers\) in .*a\.jsonl needs"):
        run_in_process("generate", gen)
    assert [json.loads(x)["id"] for x in open(answers)] == [0, 1]  # the first batch is kept
    monkeypatch.setattr(outputs, "append_jsonl", real)
    run_in_process("generate", gen)
    assert sorted(json.loads(x)["id"] for x in open(answers)) == [0, 1, 2, 3]
