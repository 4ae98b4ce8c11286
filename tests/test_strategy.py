"""DeepspeedStrategy: sampler, DeepSpeed configs, engines, resumable checkpoints, HF export,
and a real 2-process ZeRO-3 run under the deepspeed launcher."""

import contextlib
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from openrlhf.config.schema import AdamConfig, DSConfig, TrainConfig
from openrlhf.config.validate import ds_problems
from openrlhf.utils.deepspeed import ckpt_io
from openrlhf.utils.deepspeed.ds_config import eval_ds_config, train_ds_config
from openrlhf.utils.deepspeed.sampler import ResumableDistributedSampler
from openrlhf.utils.distributed import find_free_port

from tiny import as_flags, assert_no_shm_segments_left

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "scripts", "ds_train_tiny.py")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


# ----- sampler ---------------------------------------------------------------------------


def _rank_orders(n, world, seed=5, epoch=0, consumed=0, shuffle=True):
    return [
        list(
            ResumableDistributedSampler(n, world, r, shuffle=shuffle, seed=seed, epoch=epoch, consumed_samples=consumed)
        )
        for r in range(world)
    ]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sampler_skip_matches_uninterrupted_pass(world):
    n = 37
    full = _rank_orders(n, world)
    for consumed in range(0, (n // world) * world + 1, world):
        resumed = _rank_orders(n, world, consumed=consumed)
        for r in range(world):
            assert resumed[r] == full[r][consumed // world :]
            s = ResumableDistributedSampler(n, world, r, seed=5, consumed_samples=consumed)
            assert len(s) == len(resumed[r])


def test_sampler_two_ranks_disjoint_complete_and_equal_length():
    a, b = _rank_orders(20, 2)
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(20))
    # drop_last: 21 rows -> 10 per rank, one row of the epoch unused, lengths equal.
    a, b = _rank_orders(21, 2)
    assert len(a) == len(b) == 10 and not set(a) & set(b)
    # The global order interleaves ranks: rank r holds positions r, r+W, ...
    order = ResumableDistributedSampler(21, 2, 0, seed=5).global_order()
    assert a == order[:20][0::2] and b == order[:20][1::2]


def test_sampler_reshuffles_per_epoch_deterministically():
    e0 = _rank_orders(30, 2, epoch=0)
    e1 = _rank_orders(30, 2, epoch=1)
    assert e0 != e1
    assert e1 == _rank_orders(30, 2, epoch=1)
    assert _rank_orders(30, 2, seed=6) != e0
    s = ResumableDistributedSampler(30, 2, 1, seed=5)
    s.set_epoch(1)
    assert list(s) == e1[1]
    assert _rank_orders(6, 2, shuffle=False) == [[0, 2, 4], [1, 3, 5]]


def test_sampler_rejects_bad_consumed_samples():
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        ResumableDistributedSampler(10, 2, 0, consumed_samples=3)
    with pytest.raises(ValueError, match="outside"):
        ResumableDistributedSampler(10, 2, 0, consumed_samples=12)
    with pytest.raises(ValueError, match="rank"):
        ResumableDistributedSampler(10, 2, 2)


# ----- DeepSpeed config dicts ------------------------------------------------------------


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_grad_accum_dtype_is_refused_where_deepspeed_would_refuse_it(stage):
    """Without ZeRO, DeepSpeed accumulates gradients only in the model's dtype: its optimizer check in
    ``deepspeed.initialize`` raises NotImplementedError for any other grad_accum_dtype. Validation refuses
    exactly those settings, checked against DeepSpeed's own check."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

    class Engine:  # what DeepSpeed's check reads of an engine without ZeRO
        pipeline_parallelism = False

        def __init__(self, model, accum):
            self.types = (dtypes[model], dtypes[accum])

        def get_data_types(self):
            return self.types

        def zero_optimization(self):
            return False

    for param in dtypes:
        for accum in dtypes:
            found = [
                p
                for p in ds_problems(DSConfig(zero_stage=stage, param_dtype=param, grad_accum_dtype=accum))
                if p.startswith("--ds.grad_accum_dtype")
            ]
            if stage > 0:
                assert found == []
                continue
            try:
                DeepSpeedEngine._do_optimizer_sanity_check(Engine(param, accum), None)
                deepspeed_refuses = False
            except NotImplementedError:
                deepspeed_refuses = True
            assert bool(found) == deepspeed_refuses == (param != accum), (param, accum, found)
            if found:
                assert "--ds.zero_stage 1, 2 or 3" in found[0] and f"--ds.param_dtype {param}" in found[0]


def test_flash_attention_with_fp32_is_refused():
    for name in ("flash_attention_2", "flash_attention_3"):
        found = ds_problems(DSConfig(param_dtype="fp32", attn_implementation=name), training=False)
        assert len(found) == 1 and found[0].startswith(f"--ds.attn_implementation {name}") and "fp32" in found[0]
        assert ds_problems(DSConfig(param_dtype="bf16", attn_implementation=name)) == []
    assert ds_problems(DSConfig(param_dtype="fp32", attn_implementation="auto")) == []


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("offload", [False, True])
def test_ds_config_dicts(stage, dtype, offload):
    ds = DSConfig(zero_stage=stage, param_dtype=dtype, adam_offload=offload)
    if offload and stage == 0:
        assert any("--ds.adam_offload" in p for p in ds_problems(ds))
        return
    assert ds_problems(ds) == []
    cfg = train_ds_config(ds, max_norm=0.5, micro_batch_size=2, accumulated_gradient=4, world_size=2)
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == ("cpu" if offload else "none")
    assert cfg["bf16"]["enabled"] == (dtype == "bf16")
    assert cfg["fp16"]["enabled"] == (dtype == "fp16")
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["train_micro_batch_size_per_gpu"] == 2
    assert cfg["gradient_accumulation_steps"] == 4
    assert cfg["train_batch_size"] == 16
    assert cfg["zero_allow_untested_optimizer"] is True
    assert cfg["steps_per_print"] >= 10**9
    assert cfg["wandb"] == {"enabled": False}

    ev = eval_ds_config(ds, offload=offload, micro_batch_size=2, accumulated_gradient=4, world_size=2)
    assert ev["zero_optimization"]["stage"] == (3 if stage == 3 else 0)
    if stage == 3:
        assert ev["zero_optimization"]["offload_param"]["device"] == ("cpu" if offload else "none")
    else:
        assert "offload_param" not in ev["zero_optimization"]
    assert "optimizer" not in ev and "gradient_clipping" not in ev
    assert ev["bf16"]["enabled"] == (dtype == "bf16")
    assert ev["train_batch_size"] == 16


def test_strategy_rejects_bad_ds_settings():
    from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy

    with pytest.raises(ValueError) as e:
        DeepspeedStrategy(DSConfig(zero_stage=4, param_dtype="f32"), TrainConfig(), 1.0, AdamConfig())
    assert "--ds.zero_stage" in str(e.value) and "--ds.param_dtype" in str(e.value)


def test_light_import():
    code = (
        "import sys, openrlhf.utils.deepspeed, openrlhf.utils.distributed;"
        "from openrlhf.utils.deepspeed.sampler import ResumableDistributedSampler;"
        "assert 'deepspeed' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=_clean_env())


def test_exit_cleanly_only_exits_under_launcher():
    code = "from openrlhf.utils.distributed import exit_cleanly; exit_cleanly(3); print('alive')"
    plain = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True, text=True)
    assert plain.returncode == 0 and "alive" in plain.stdout
    launched = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_clean_env(WORLD_SIZE="2"), capture_output=True, text=True
    )
    assert launched.returncode == 3 and "alive" not in launched.stdout


# ----- checkpoint filesystem helpers -----------------------------------------------------


def test_find_latest_tag_and_leftovers(tmp_path):
    d = str(tmp_path)
    assert ckpt_io.find_latest_tag(d) is None
    for s in (2, 10):
        os.makedirs(os.path.join(d, f"global_step{s}"))
    os.makedirs(os.path.join(d, ".tmp_global_step12"))  # crashed save
    open(os.path.join(d, ".latest.k3j2x9.tmp"), "w").close()  # a pointer write killed mid-way
    assert ckpt_io.find_latest_tag(d) == "global_step10"  # no pointer: highest complete
    ckpt_io.write_latest(d, "global_step2")
    assert ckpt_io.find_latest_tag(d) == "global_step2"
    ckpt_io.write_latest(d, "global_step99")  # points at nothing: fall back
    assert ckpt_io.find_latest_tag(d) == "global_step10"
    ckpt_io.remove_leftovers(d)
    assert sorted(os.listdir(d)) == ["global_step10", "global_step2", "latest"]


def test_install_folder_keeps_other_content(tmp_path):
    out = tmp_path / "out"
    tmp = tmp_path / "t1"
    tmp.mkdir()
    (tmp / "model.safetensors").write_text("new")
    (tmp / "config.json").write_text("{}")
    ckpt_io.install_folder(str(tmp), str(out))  # new folder: a rename
    assert not tmp.exists() and (out / "model.safetensors").read_text() == "new"
    (out / "metrics.jsonl").write_text("m")
    (out / "model-00001-of-00002.safetensors").write_text("stale shard")
    tmp.mkdir()
    (tmp / "model.safetensors").write_text("newer")
    ckpt_io.install_folder(str(tmp), str(out))
    assert sorted(os.listdir(out)) == ["config.json", "metrics.jsonl", "model.safetensors"]
    assert (out / "model.safetensors").read_text() == "newer"


# ----- in-process engines (a 1-process gloo group) ---------------------------------------


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _make(stage=0, dtype="fp32", mbs=1, batch=2, lr=1e-2, offload=False, seed=1):
    from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy

    s = DeepspeedStrategy(
        DSConfig(zero_stage=stage, param_dtype=dtype, adam_offload=offload),
        TrainConfig(micro_batch_size=mbs, batch_size=batch, seed=seed),
        max_norm=1.0,
        adam=AdamConfig(lr=lr, betas=(0.9, 0.95), weight_decay=0.01),
    )
    s.setup_distributed()
    return s


@pytest.fixture(scope="module")
def group():
    """One process group for this module; torn down (and env restored) at the end."""
    s = _make()
    yield s
    s.finish()
    assert not torch.distributed.is_initialized()


def _engine(strategy, path, scheduler="cosine_with_min_lr", total=10, warmup=0.2):
    from transformers import AutoModelForCausalLM

    with strategy.model_init_context(for_training=True):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=strategy.torch_dtype)
    opt = strategy.create_optimizer(model)
    sched = strategy.create_scheduler(opt, scheduler, warmup, total)
    return strategy.prepare_train(model, opt, sched)


def test_optim_muon_updates_hidden_matrices_as_torch_muon_and_the_rest_as_adamw(group, tiny_dir):
    """--optim muon: DeepSpeed's Muon built from the config. After one step from the same gradients, every matrix
    but the embeddings and LM head moved as torch.optim.Muon moves it (lr 0.02, momentum 0.95, Nesterov, 5
    Newton-Schulz steps in bf16, the same decoupled weight decay), to bf16's precision; every other parameter as
    torch's AdamW with --adam.* (weight decay on the embedding matrix, none on norms): exactly."""
    from transformers import AutoModelForCausalLM

    from openrlhf.config.schema import MuonConfig
    from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy

    s = DeepspeedStrategy(
        DSConfig(zero_stage=0, param_dtype="fp32"),
        TrainConfig(micro_batch_size=1, batch_size=1, seed=1),
        max_norm=0.0,
        adam=AdamConfig(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1),
        muon=MuonConfig(lr=0.02, momentum=0.95),
    )
    s.setup_distributed()
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine = s.prepare_trained(model, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    # 4 x 48 tokens: a gradient of full rank (a rank-deficient one leaves Newton-Schulz iterating on bf16 noise)
    ids = torch.randint(3, 300, (4, 48), generator=torch.Generator().manual_seed(0))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    grads = {n: p.grad.detach().clone() for n, p in engine.module.named_parameters()}
    engine.step()
    muon_names = {n for n, p in before.items() if p.ndim >= 2 and "embed" not in n and "lm_head" not in n}
    assert muon_names and len(muon_names) < len(before)
    rel = {}
    for n, p in engine.module.named_parameters():
        w = before[n].clone().requires_grad_(True)
        w.grad = grads[n]
        if n in muon_names:
            ref = torch.optim.Muon([w], lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5)
        else:
            decay = 0.1 if p.ndim >= 2 else 0.0
            ref = torch.optim.AdamW([w], lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=decay)
        ref.step()
        got, want = p.detach() - before[n], w.detach() - before[n]
        if n in muon_names:
            rel[n] = ((got - want).norm() / want.norm()).item()
            assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.98, n
        else:
            assert torch.allclose(got, want, atol=1e-7, rtol=1e-5), n
    # bf16 Newton-Schulz: ~3% apart on a full-rank gradient (the attention output projections, whose gradient
    # has a lower rank, up to ~18%, measured)
    assert max(rel.values()) < 0.25 and sorted(rel.values())[len(rel) // 2] < 0.05, rel


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (1, 12), generator=g) for _ in range(n)]


def _micro(strategy, engine, ids):
    loss = engine(input_ids=ids, labels=ids).loss
    strategy.backward(loss, engine)
    strategy.optimizer_step(engine)
    return loss.item()


def _params(strategy, engine):
    return {k: v.clone() for k, v in strategy.gathered_state_dict(engine).items()}


def test_setup_single_process(group):
    s = _make(mbs=2, batch=8)
    assert (s.world_size, s.rank, s.local_rank, s.is_rank_0()) == (1, 0, 0, True)
    assert s.device == torch.device("cpu") and s.accumulated_gradient == 4
    assert s.torch_dtype == torch.float32 and _make(dtype="bf16").torch_dtype == torch.bfloat16
    # Seeded from train.seed.
    _make(seed=123)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    _make(seed=123)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
    # all_reduce across processes: see the 2-process runs below (scripts/ds_train_tiny.py).


def test_batch_size_not_divisible_names_flags(group):
    with pytest.raises(ValueError) as e:
        _make(mbs=2, batch=3)
    assert "--train.batch_size" in str(e.value) and "--train.micro_batch_size" in str(e.value)


def test_scheduler_shapes(group, tiny_dir):
    from transformers import AutoModelForCausalLM

    s = group
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)

    def lrs(name, total=10, warmup=0.2):
        opt = s.create_optimizer(model)
        sched = s.create_scheduler(opt, name, warmup, total)
        out = []
        for _ in range(total):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    lr = s.adam.lr
    cmin = lrs("cosine_with_min_lr")
    assert cmin[0] == 0.0 and cmin[2] == pytest.approx(lr) and min(cmin[2:]) > 0.1 * lr - 1e-12
    assert lrs("cosine_with_min_lr", total=100, warmup=0.0)[-1] == pytest.approx(0.1 * lr, rel=0.01)
    assert lrs("cosine", total=100, warmup=0.0)[-1] < 0.01 * lr
    assert lrs("linear")[-1] == pytest.approx(lr / 8)
    assert set(lrs("constant")) == {lr}
    assert lrs("constant_with_warmup")[0] == 0.0 and lrs("constant_with_warmup")[-1] == lr
    # Every other transformers name (OpenRLHF passes any to get_scheduler), worked by hand:
    assert lrs("cosine_with_restarts") == pytest.approx(lrs("cosine"))  # one cycle: the cosine
    assert lrs("polynomial")[-1] == pytest.approx((lr - 1e-7) / 8 + 1e-7)  # linear to lr_end=1e-7
    assert lrs("inverse_sqrt")[8] == pytest.approx(lr / 2)  # lr x sqrt(warmup / step)
    assert lrs("cosine_warmup_with_min_lr", total=100, warmup=0.0)[-1] == pytest.approx(0.1 * lr, rel=0.01)
    wsd = lrs("warmup_stable_decay", total=20, warmup=0.0)  # stable, then decays over the last 2 steps
    assert wsd[:19] == [lr] * 19 and wsd[19] == pytest.approx(0.1 * lr + 0.9 * lr * 0.5)
    with pytest.raises(ValueError, match="--lr_scheduler"):
        lrs("reduce_lr_on_plateau")
    groups = s.create_optimizer(model).param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # norms / biases: no decay


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_engine_step_changes_params(group, tiny_dir, stage):
    s = _make(stage=stage)
    engine = _engine(s, tiny_dir, scheduler="constant")
    before = _params(s, engine)
    for ids in _batches(2):  # accumulation 2: one optimizer step
        _micro(s, engine, ids)
    after = _params(s, engine)
    assert engine.global_steps == 1
    assert all(not torch.equal(before[k], after[k]) for k in before if "norm" not in k)
    assert all(v.dtype == torch.float32 for v in after.values())


def test_model_init_context(group, tiny_dir):
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    assert isinstance(_make(stage=2).model_init_context(True), contextlib.nullcontext)
    s3 = _make(stage=3)
    with s3.model_init_context(for_training=False, offload=True):
        assert is_deepspeed_zero3_enabled()
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert not is_deepspeed_zero3_enabled()
    assert all(hasattr(p, "ds_id") for p in model.parameters())
    ref = s3.prepare_eval(model, offload=True)
    assert not any(p.requires_grad for p in ref.module.parameters()) and not ref.module.training
    ids = torch.randint(3, 300, (1, 8))
    plain = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        assert torch.allclose(ref(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5)
    # Stages 0-2: the plain module, frozen, in eval mode, training dtype.
    m = _make(stage=0).prepare_eval(AutoModelForCausalLM.from_pretrained(tiny_dir), offload=True)
    assert not any(p.requires_grad for p in m.parameters()) and not m.training


def _optim_tensors(engine):
    out = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            out.append(x.clone())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, (int, float)):
            out.append(torch.tensor(float(x)))

    walk(engine.optimizer.state_dict())
    return out


@pytest.mark.parametrize("stage", [0, 2])
def test_checkpoint_resume_is_exact(group, tiny_dir, tmp_path, stage):
    s = _make(stage=stage)
    engine = _engine(s, tiny_dir, total=8, warmup=0.25)
    data = _batches(8, seed=stage)
    for ids in data[:4]:  # 2 optimizer steps
        _micro(s, engine, ids)
    ck = str(tmp_path / "ck")
    s.save_ckpt(engine, ck, step=2, client_state={"consumed_samples": 4, "epoch": 0}, max_num=3)
    saved_params, saved_opt, saved_lr = _params(s, engine), _optim_tensors(engine), engine.get_lr()
    rng_after_save = (random.random(), np.random.rand(), torch.rand(3))
    tail = [_micro(s, engine, ids) for ids in data[4:]]  # 2 more steps
    assert engine.get_lr() != saved_lr
    assert any(not torch.equal(saved_params[k], v) for k, v in _params(s, engine).items())

    # Simulated crash while writing the next checkpoint: a partial temp folder.
    os.makedirs(os.path.join(ck, ".tmp_global_step4"))
    with open(os.path.join(ck, ".tmp_global_step4", "junk.pt"), "w") as f:
        f.write("partial")
    state = s.load_ckpt(engine, ck)
    assert state == {"consumed_samples": 4, "epoch": 0, "step": 2}
    assert (random.random(), np.random.rand()) == rng_after_save[:2]
    assert torch.equal(torch.rand(3), rng_after_save[2])
    loaded = _params(s, engine)
    assert all(torch.equal(saved_params[k], loaded[k]) for k in saved_params)
    opt = _optim_tensors(engine)
    assert len(opt) == len(saved_opt) and all(torch.equal(a, b) for a, b in zip(opt, saved_opt, strict=True))
    assert engine.get_lr() == saved_lr
    # The resumed run reproduces the tail of the loss curve exactly.
    assert [_micro(s, engine, ids) for ids in data[4:]] == tail

    # A fresh engine (a restarted process) resumes the same way.
    engine2 = _engine(s, tiny_dir, total=8, warmup=0.25)
    assert s.load_ckpt(engine2, ck)["step"] == 2
    assert [_micro(s, engine2, ids) for ids in data[4:]] == tail
    # The next save clears the crash leftovers.
    s.save_ckpt(engine2, ck, step=4, client_state={}, max_num=3)
    assert sorted(n for n in os.listdir(ck) if n.startswith(("global", "."))) == ["global_step2", "global_step4"]


class _FakeCuda:
    """torch.cuda's RNG functions for ``visible`` devices, recording what is restored (no GPU needed)."""

    def __init__(self, visible: int, current: int = 0):
        self.visible, self.current = visible, current
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(visible)}

    def install(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: self.visible)
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_rng_state", lambda device="cuda": self.states[self.current].clone())
        monkeypatch.setattr(cuda, "get_rng_state_all", lambda: [self.states[i].clone() for i in range(self.visible)])

        def set_one(state, device="cuda"):
            self.states[self.current] = state.clone()

        def set_all(states):
            if len(states) > self.visible:  # what torch does: it indexes devices that are not there
                raise RuntimeError(f"CUDA error: invalid device ordinal (device {self.visible})")
            for i, st in enumerate(states):
                self.states[i] = st.clone()

        monkeypatch.setattr(cuda, "set_rng_state", set_one)
        monkeypatch.setattr(cuda, "set_rng_state_all", set_all)


def test_rng_restore_with_fewer_visible_devices_than_at_save(tmp_path, monkeypatch):
    """A run saved by the launcher's rank 3 of 8 visible GPUs resumes in a Ray actor that sees one GPU:
    only this process's own device state is saved and restored, so nothing indexes a missing device."""
    with monkeypatch.context() as m:
        saver = _FakeCuda(visible=8, current=3)
        saver.states[3] = torch.arange(16, dtype=torch.uint8)  # the generator rank 3 drew from
        saver.install(m)
        ckpt_io.save_rng_state(str(tmp_path), rank=3)
    saved = torch.load(ckpt_io.rng_file(str(tmp_path), 3), weights_only=False)
    assert torch.equal(saved["cuda"], torch.arange(16, dtype=torch.uint8)) and saved["cuda_device"] == 3

    with monkeypatch.context() as m:
        resumer = _FakeCuda(visible=1, current=0)
        resumer.install(m)
        assert ckpt_io.load_rng_state(str(tmp_path), rank=3)
        assert torch.equal(resumer.states[0], torch.arange(16, dtype=torch.uint8))

    # A checkpoint of the earlier format (one state per device visible at save) resumes too: the entry of
    # the current device when the list has one.
    old = dict(saved, cuda=[torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(8)])
    old.pop("cuda_device")
    with monkeypatch.context() as m:
        resumer = _FakeCuda(visible=1, current=0)
        resumer.install(m)
        ckpt_io.set_rng_state(old)
        assert torch.equal(resumer.states[0], torch.full((16,), 10, dtype=torch.uint8))
    with monkeypatch.context() as m:
        resumer = _FakeCuda(visible=4, current=2)
        resumer.install(m)
        ckpt_io.set_rng_state(old)
        assert torch.equal(resumer.states[2], torch.full((16,), 12, dtype=torch.uint8))
        assert torch.equal(resumer.states[0], torch.full((16,), 0, dtype=torch.uint8))  # other devices untouched


def test_load_without_checkpoint_returns_none(group, tiny_dir, tmp_path):
    s = _make(stage=0)
    engine = _engine(s, tiny_dir)
    assert s.load_ckpt(engine, str(tmp_path / "missing")) is None
    os.makedirs(tmp_path / "only_tmp" / ".tmp_global_step3")
    assert s.load_ckpt(engine, str(tmp_path / "only_tmp")) is None


def test_max_num_pruning(group, tiny_dir, tmp_path):
    s = _make(stage=0)
    engine = _engine(s, tiny_dir)
    ck = str(tmp_path / "ck")
    for step in (1, 2, 3, 4):
        s.save_ckpt(engine, ck, step=step, client_state={"n": step}, max_num=2)
        os.makedirs(os.path.join(ck, f"global_step{step}_hf"))  # an HF export next to it
    assert ckpt_io.complete_tags(ck) == ["global_step3", "global_step4"]
    assert sorted(n for n in os.listdir(ck) if n.endswith("_hf")) == ["global_step3_hf", "global_step4_hf"]
    assert open(os.path.join(ck, "latest")).read() == "global_step4"
    s.save_ckpt(engine, ck, step=4, client_state={"n": 44}, max_num=2)  # same step again: replaced
    assert s.load_ckpt(engine, ck)["n"] == 44
    s.save_ckpt(engine, ck, step=5, client_state={}, max_num=0)  # keeps at least the newest
    assert ckpt_io.complete_tags(ck) == ["global_step5"]
    assert not [n for n in os.listdir(ck) if n.startswith(".")]


def test_save_hf_model_roundtrip(group, tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = _make(stage=0)
    engine = _engine(s, tiny_dir, scheduler="constant")
    for ids in _batches(2):
        _micro(s, engine, ids)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    out = tmp_path / "out"
    s.save_hf_model(engine, tok, str(out))
    (out / "metrics.jsonl").write_text("{}\n")
    s.save_hf_model(engine, tok, str(out))  # into an existing folder: other files stay
    assert (out / "metrics.jsonl").exists() and (out / "model.safetensors").exists()
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    want = _params(s, engine)
    got = reloaded.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want) and got["lm_head.weight"].dtype == torch.float32
    init = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    assert not torch.equal(init["lm_head.weight"], got["lm_head.weight"])
    tok2 = AutoTokenizer.from_pretrained(str(out))
    assert tok2.chat_template == tok.chat_template
    assert "<|im_start|>user" in tok2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_setup_again_after_finish(tiny_dir, group):
    # finish() tears the group down; a new strategy in the same process builds a new one.
    s = _make(stage=0)
    s.finish()
    assert not torch.distributed.is_initialized()
    s2 = _make(stage=2)
    assert torch.distributed.is_initialized()
    engine = _engine(s2, tiny_dir, scheduler="constant")
    _micro(s2, engine, _batches(1)[0])


@pytest.mark.main_leg
@pytest.mark.slow
def test_adam_offload_engine(group, tiny_dir):
    # DeepSpeedCPUAdam JIT-compiles its op on first use (~1 min, cached afterwards).
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    s = _make(stage=2, offload=True)
    engine = _engine(s, tiny_dir, scheduler="constant")
    assert isinstance(engine.optimizer.optimizer, DeepSpeedCPUAdam)
    before = _params(s, engine)
    for ids in _batches(2):
        _micro(s, engine, ids)
    assert any(not torch.equal(before[k], v) for k, v in _params(s, engine).items())


# ----- 2 processes -----------------------------------------------------------------------


def _launch(cmd, out, timeout=300):
    proc = subprocess.run(cmd, cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    with open(os.path.join(out, "result.json")) as f:
        return json.load(f)


def _check_two_process_run(out, tiny_dir, result):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert result["world_size"] == 2 and result["accumulated_gradient"] == 1
    assert result["sampler_disjoint_complete"]
    assert result["all_reduce_rank_mean"] == 0.5 and result["all_reduce_rank_max"] == 1
    assert result["ref_unchanged"] and not result["ref_requires_grad"] and not result["ref_training_mode"]
    assert result["moved_after_extra_step"] and result["resume_equal"]
    assert result["client_state"] == {"consumed_samples": 4, "step": 2}
    hf = os.path.join(out, "hf")
    got = AutoModelForCausalLM.from_pretrained(hf).state_dict()
    gathered = torch.load(os.path.join(out, "gathered.pt"))
    init = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    assert set(gathered) >= set(got)
    assert all(torch.equal(got[k], gathered[k]) for k in got)
    assert all(got[k].dtype == torch.float32 for k in got)
    assert not torch.equal(got["lm_head.weight"], init["lm_head.weight"])
    assert AutoTokenizer.from_pretrained(hf).chat_template
    assert ckpt_io.complete_tags(os.path.join(out, "ckpt")) == ["global_step2"]


@pytest.mark.slow
def test_two_process_zero3_deepspeed_launcher(tiny_dir, tmp_path):
    """~15 s here: ZeRO-3 training + a ZeRO-3 offloaded frozen copy, 2 CPU processes."""
    out, port = str(tmp_path), str(find_free_port())
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        port,
        SCRIPT,
        *as_flags({"model": tiny_dir, "out": out, "stage": "3", "offload_ref": None}),
    ]
    result = _launch(cmd, out)
    assert result["partitioned_at_load"] and result["ref_partitioned_at_load"]
    _check_two_process_run(out, tiny_dir, result)
    assert_no_shm_segments_left(port)


@pytest.mark.slow
def test_two_process_zero2_torchrun(tiny_dir, tmp_path):
    """~8 s here: the same run under torchrun with ZeRO-2."""
    out, port = str(tmp_path), str(find_free_port())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        port,
        SCRIPT,
        "--model",
        tiny_dir,
        "--out",
        out,
        "--stage",
        "2",
    ]
    result = _launch(cmd, out)
    assert not result["partitioned_at_load"]
    _check_two_process_run(out, tiny_dir, result)
    assert_no_shm_segments_left(port)


def test_release_shm_allreduce_buffer_removes_only_this_rank(tmp_path, monkeypatch):
    from openrlhf.utils.distributed import release_shm_allreduce_buffer

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29555")
    uid = os.getuid()
    mine = tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29555_1"
    peer = tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29555_0"
    other_run = tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29556_1"
    for f in (mine, peer, other_run):
        f.write_bytes(b"x")
    assert release_shm_allreduce_buffer(1, str(tmp_path)) is True
    assert not mine.exists() and peer.exists() and other_run.exists()
    assert release_shm_allreduce_buffer(1, str(tmp_path)) is False  # already gone
    monkeypatch.delenv("MASTER_PORT")
    assert release_shm_allreduce_buffer(0, str(tmp_path)) is False and peer.exists()


def test_frozen_offload_streams_blocks_and_copies_nothing_back(tiny_dir):
    """ZeRO 0-2 frozen-model offload: the weights stay in one CPU master copy (pinned on CUDA); a forward
    copies the non-block weights, then each decoder layer just before it runs (the next one prefetched),
    and drops each copy after use: nothing is copied back to the host and no new host memory is taken.
    On CPU the copies are real copies, so which layers are resident when is observable."""
    from transformers import AutoModelForCausalLM

    from openrlhf.utils.deepspeed.offload import FrozenOffload

    plain = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    off = FrozenOffload(model, torch.device("cpu"))
    layers = list(model.model.layers)
    assert len(off.units) == len(layers) == 2
    masters = {name: t.data_ptr() for name, t in list(model.named_parameters()) + list(model.named_buffers())}

    def resident(module) -> bool:
        prefix = next(name for name, m in model.named_modules() if m is module)
        return all(p.data_ptr() != masters[f"{prefix}.{n}"] for n, p in module.named_parameters())

    seen = []
    for i, layer in enumerate(layers):  # registered after FrozenOffload's hooks: sees the loaded state
        layer.register_forward_pre_hook(
            lambda m, a, i=i: seen.append((i, [resident(x) for x in layers], resident(model.lm_head)))
        )
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = plain(input_ids=ids).logits
        for _ in range(2):
            seen.clear()
            copies = off.copies
            got = model(input_ids=ids).logits
            assert torch.equal(got, want)
            # layer 0 runs with layer 1 prefetched; layer 1 runs after layer 0 was dropped
            assert seen == [(0, [True, False], True), (1, [False, True], True)]
            n_tensors = len(masters)
            assert off.copies - copies == n_tensors  # each weight copied once per forward, none twice
            now = {name: t.data_ptr() for name, t in list(model.named_parameters()) + list(model.named_buffers())}
            assert now == masters  # back on the very same host storage: nothing copied back


def test_frozen_offload_of_an_actor_running_packed_rows(tiny_dir):
    """Offload hooks sit on the Actor, whose packed forward may call the model once per sequence: every
    call streams the layers again and the log-probs equal the resident model's."""
    from openrlhf.models.actor import Actor
    from openrlhf.utils.deepspeed.offload import FrozenOffload

    plain, actor = Actor.from_pretrained(tiny_dir).eval(), Actor.from_pretrained(tiny_dir).eval()
    off = FrozenOffload(actor, torch.device("cpu"))
    ids = torch.randint(3, 300, (1, 15), generator=torch.Generator().manual_seed(1))
    position_ids = torch.tensor([list(range(6)) + list(range(4)) + list(range(5))])
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        want, _ = plain(ids, None, loss_mask, position_ids=position_ids)
        got, _ = actor(ids, None, loss_mask, position_ids=position_ids)
    assert torch.equal(got, want) and want.abs().sum() > 0
    n_block = sum(len(u) for u in off.units)
    assert off.copies == len(off.rest) + 3 * n_block  # the rest once, the layers once per sequence
