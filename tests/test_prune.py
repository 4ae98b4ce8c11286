"""Structured pruning: sizes, configs, exactness of the surgery, the activation-aware ranking, flags."""

import copy
import json
import math
import os

import pytest
import torch

from openrlhf.config.parse import ConfigError, load_config
from openrlhf.config.schema import DataConfig
from openrlhf.tools import prune as P
from openrlhf.utils.errors import UserError

from tiny import CORPUS, as_flags, make_model, write_jsonl

MLP = 64  # intermediate size of the test models
HEADS, KV, HEAD_DIM, HIDDEN = 4, 2, 8, 32


def _strengthen(model, seed: int = 0) -> None:
    """Random tiny models barely use their MLPs; scale weights so that pruning matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (
                layer.mlp.gate_proj,
                layer.mlp.up_proj,
                layer.mlp.down_proj,
                layer.self_attn.o_proj,
                layer.self_attn.v_proj,
            ):
                lin.weight.mul_(10)
            # Channels of very different strength, as in trained models.
            layer.mlp.up_proj.weight.mul_(torch.exp(torch.randn(MLP, generator=g))[:, None])
        model.lm_head.weight.mul_(10)


@pytest.fixture(scope="module")
def strong_dir(tmp_path_factory, tiny_dir):
    """A 3-layer ChatML Llama (hidden 32, MLP 64, 4 heads / 2 kv heads) whose MLPs matter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(tmp_path_factory.mktemp("strong"))
    make_model(folder, AutoTokenizer.from_pretrained(tiny_dir), seed=5, hidden=HIDDEN, layers=3)
    model = AutoModelForCausalLM.from_pretrained(folder)
    _strengthen(model)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def calib_jsonl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    return write_jsonl(str(folder / "calib.jsonl"), [{"prompt": t} for t in CORPUS])


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _calib(tokenizer, rows=None):
    rows = rows or [{"prompt": t} for t in CORPUS]
    return P.build_calibration(rows, tokenizer, DataConfig(apply_chat_template=True, max_len=64))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits[0].float()


def _kl(p_logits, q_logits):
    """Mean over positions of KL(p || q)."""
    p, q = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def _corr(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def _param_formula(cfg) -> int:
    h, v, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    H, K, D, I = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size
    per_layer = h * H * D + 2 * h * K * D + H * D * h + 3 * h * I + 2 * h
    return v * h * (1 if cfg.tie_word_embeddings else 2) + L * per_layer + h


def _argv(model, data, out, *extra):
    return [
        *as_flags(
            {
                "model.model_name_or_path": model,
                "data.dataset": data,
                "data.prompt_key": "prompt",
                "data.apply_chat_template": None,
                "prune.output_dir": out,
            }
        ),
        *extra,
    ]


# --------------------------------------------------------------------------- end to end


def test_prune_cli_mlp_size_params_and_report(strong_dir, calib_jsonl, tmp_path):
    from openrlhf.cli.prune import main

    out = str(tmp_path / "pruned")
    report = main(_argv(strong_dir, calib_jsonl, out, "--prune.mlp_ratio", "0.2", "--prune.calibration_samples", "5"))
    model, tok = _load(out)
    assert model.config.intermediate_size == math.floor(0.8 * MLP) == 51
    for layer in model.model.layers:
        assert layer.mlp.gate_proj.weight.shape == (51, HIDDEN)
        assert layer.mlp.down_proj.weight.shape == (HIDDEN, 51)
    n = sum(p.numel() for p in model.parameters())
    assert n == _param_formula(model.config) == report["params_after"]
    orig, _ = _load(strong_dir)
    assert report["params_before"] == sum(p.numel() for p in orig.parameters())
    assert report["params_before"] - n == 3 * 3 * HIDDEN * (MLP - 51)
    assert tok.chat_template  # the tokenizer travels with its template
    saved = json.load(open(os.path.join(out, "prune_report.json")))
    assert saved["calibration_rows"] == 5 and saved["method"] == "activation"
    assert math.isfinite(saved["loss_before"]) and math.isfinite(saved["loss_after"])
    assert saved["loss_after"] != saved["loss_before"]
    assert not any(name.startswith(".pruned.tmp") for name in os.listdir(tmp_path))


def test_prune_heads_and_layers_loadable_with_updated_config(strong_dir, calib_jsonl, tmp_path):
    from openrlhf.tools.prune import prune

    out = str(tmp_path / "pruned")
    cfg = load_config(
        _argv(
            strong_dir,
            calib_jsonl,
            out,
            "--prune.mlp_ratio",
            "0.25",
            "--prune.head_ratio",
            "0.5",
            "--prune.num_layers",
            "1",
        ),
        task="prune",
    )
    report = prune(cfg, progress=False)
    model, tok = _load(out)
    c = model.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size) == (
        2,
        2,
        1,
        HEAD_DIM,
        48,
    )
    assert len(report["dropped_layers"]) == 1 and len(report["layer_cosine"]) == 3
    assert sum(p.numel() for p in model.parameters()) == _param_formula(c)
    # Generation with a KV cache exercises the renumbered layers and smaller heads.
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out_ids = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out_ids.shape[1] == ids["input_ids"].shape[1] + 5


# --------------------------------------------------------------------------- exactness of the surgery


def _zeroed_reference(model, report, mlp_keep, kv_keep):
    """The original model with removed units' outputs zeroed: must equal the pruned model."""
    ref = copy.deepcopy(model)
    group = HEADS // KV
    with torch.no_grad():
        for i, layer in enumerate(ref.model.layers):
            if i in report.get("dropped_layers", []):
                layer.mlp.down_proj.weight.zero_()
                layer.self_attn.o_proj.weight.zero_()
                if layer.self_attn.o_proj.bias is not None:
                    layer.self_attn.o_proj.bias.zero_()
                continue
            if mlp_keep is not None:
                gone = [j for j in range(MLP) if j not in set(mlp_keep[i].tolist())]
                layer.mlp.down_proj.weight[:, gone] = 0
            if kv_keep is not None:
                for g in range(KV):
                    if g not in set(kv_keep[i].tolist()):
                        cols = slice(g * group * HEAD_DIM, (g + 1) * group * HEAD_DIM)
                        layer.self_attn.o_proj.weight[:, cols] = 0
    return ref


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_pruned_model_equals_original_with_removed_units_zeroed(strong_dir, family, monkeypatch):
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(strong_dir)
    layer_types = None
    if family == "llama":
        model, _ = _load(strong_dir)
    elif family == "gemma3":  # q/k norms, four norms per layer, mixed layer types, tied embeddings
        torch.manual_seed(0)
        layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
        model = Gemma3ForCausalLM(
            Gemma3TextConfig(
                vocab_size=len(tok),
                hidden_size=HIDDEN,
                intermediate_size=MLP,
                num_hidden_layers=3,
                num_attention_heads=HEADS,
                num_key_value_heads=KV,
                head_dim=HEAD_DIM,
                max_position_embeddings=128,
                sliding_window=4,
                layer_types=layer_types,
            )
        ).eval()
        _strengthen(model)
    else:  # biases on q/k/v and a layer_types list in the config
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=len(tok),
                hidden_size=HIDDEN,
                intermediate_size=MLP,
                num_hidden_layers=3,
                num_attention_heads=HEADS,
                num_key_value_heads=KV,
                max_position_embeddings=128,
            )
        ).eval()
        _strengthen(model)
        with torch.no_grad():
            for layer in model.model.layers:
                for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    lin.bias.normal_(0, 0.5)
    calib = _calib(tok)
    captured = {}
    real_mlp, real_kv = P.prune_mlp_channels, P.prune_kv_groups
    monkeypatch.setattr(P, "prune_mlp_channels", lambda m, k: (captured.setdefault("mlp", k), real_mlp(m, k)))
    monkeypatch.setattr(P, "prune_kv_groups", lambda m, k: (captured.setdefault("kv", k), real_kv(m, k)))
    pruned = copy.deepcopy(model)
    report = P.prune_model(pruned, calib, mlp_ratio=0.25, head_ratio=0.5, num_layers=1, progress=False)
    ref = _zeroed_reference(model, report, captured["mlp"], captured["kv"])
    ids = torch.tensor([calib.sequences[0]])
    torch.testing.assert_close(_logits(pruned, ids), _logits(ref, ids), atol=2e-4, rtol=1e-4)
    assert len(pruned.model.layers) == 2 == pruned.config.num_hidden_layers
    if layer_types is not None:
        assert pruned.config.layer_types == [t for i, t in enumerate(layer_types) if i not in report["dropped_layers"]]
    if family == "qwen2":
        assert pruned.config.layer_types == ["full_attention"] * 2
        assert pruned.model.layers[0].self_attn.q_proj.bias.shape == (2 * HEAD_DIM,)
    # The surgery did change the model (the reference is not the original).
    assert not torch.allclose(_logits(pruned, ids), _logits(model, ids), atol=1e-3)


# --------------------------------------------------------------------------- the ranking


def test_small_ratio_keeps_outputs_close_and_ranking_matters(strong_dir):
    model, tok = _load(strong_dir)
    calib = _calib(tok)
    ids = torch.tensor([calib.sequences[0]])
    base = _logits(model, ids)

    pruned = copy.deepcopy(model)
    P.prune_model(pruned, calib, mlp_ratio=0.05, method="activation", progress=False)
    assert pruned.config.intermediate_size == math.floor(0.95 * MLP)
    close = _logits(pruned, ids)
    assert _corr(base, close) > 0.99 and _kl(base, close) < 0.01

    # The same check fails when the same number of channels is taken from the top of
    # the ranking instead of the bottom: the assertion above is not trivially true.
    stats = P.calibration_pass(model, calib, pad_id=0, mlp=True, progress=False)
    scores = P.mlp_channel_scores(model, "activation", stats["mlp_act"])
    worst = copy.deepcopy(model)
    P.prune_mlp_channels(worst, [P.top_indices(-s, P.kept_count(MLP, 0.05)) for s in scores])
    far = _logits(worst, ids)
    assert _corr(base, far) < 0.9 and _kl(base, far) > 10 * _kl(base, close)


def test_activation_statistics_match_a_direct_computation(strong_dir):
    """mean |down_proj input| per channel over real tokens; padding (batch of 3) must not leak in."""
    model, tok = _load(strong_dir)
    calib = _calib(tok)
    stats = P.calibration_pass(model, calib, pad_id=0, batch_size=3, mlp=True, heads=True, progress=False)
    mlp0 = model.model.layers[0].mlp
    total, count = torch.zeros(MLP), 0
    seen = []
    handle = mlp0.register_forward_pre_hook(lambda m, a: seen.append(a[0][0]))
    with torch.no_grad():
        for seq in calib.sequences:  # one at a time: no padding
            seen.clear()
            model(input_ids=torch.tensor([seq]))
            x = seen[0]
            inner = mlp0.act_fn(mlp0.gate_proj(x)) * mlp0.up_proj(x)
            total += inner.abs().sum(0)
            count += len(seq)
    handle.remove()
    torch.testing.assert_close(stats["mlp_act"][0], total / count, atol=1e-4, rtol=1e-4)
    assert stats["head_act"][0].shape == (HEADS,)


def test_activation_ranking_keeps_large_activations_and_drops_dead_columns(strong_dir):
    model, tok = _load(strong_dir)
    calib = _calib(tok)
    with torch.no_grad():
        for layer in model.model.layers:
            # Equal weight norms everywhere: the weight method sees only ties.
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):
                lin.weight.div_(lin.weight.norm(dim=1, keepdim=True))
            layer.mlp.down_proj.weight.div_(layer.mlp.down_proj.weight.norm(dim=0, keepdim=True))
            # Channel 7: the strongest activations of all, but a dead (zero) output column.
            layer.mlp.up_proj.weight[7] *= 50
            layer.mlp.down_proj.weight[:, 7] = 0
    stats = P.calibration_pass(model, calib, pad_id=0, mlp=True, progress=False)
    n_keep = P.kept_count(MLP, 0.25)
    for act in stats["mlp_act"]:
        assert int(act.argmax()) == 7  # large activation ...
    pruned = copy.deepcopy(model)
    captured = {}
    real = P.prune_mlp_channels
    P.prune_mlp_channels = lambda m, k: (captured.setdefault("keep", k), real(m, k))
    try:
        P.prune_model(pruned, calib, mlp_ratio=0.25, method="activation", progress=False)
    finally:
        P.prune_mlp_channels = real
    for i, keep in enumerate(captured["keep"]):
        act = stats["mlp_act"][i].clone()
        assert 7 not in keep.tolist()  # ... but nothing reaches the residual stream: removed first
        act[7] = -1
        expected = sorted(torch.topk(act, n_keep).indices.tolist())
        assert keep.tolist() == expected  # with unit column norms the score is the mean |activation|
    # The lowest-scored channel is the dead one: removing a single channel removes channel 7.
    one = P.mlp_channel_scores(model, "activation", stats["mlp_act"])
    assert all(int(s.argmin()) == 7 for s in one)


def test_weight_method_needs_no_calibration_and_differs(strong_dir):
    model, tok = _load(strong_dir)
    calib = _calib(tok)
    scores_w = P.mlp_channel_scores(model, "weight")
    stats = P.calibration_pass(model, calib, pad_id=0, mlp=True, progress=False)
    scores_a = P.mlp_channel_scores(model, "activation", stats["mlp_act"])
    n_keep = P.kept_count(MLP, 0.5)
    assert P.top_indices(scores_w[0], n_keep).tolist() != P.top_indices(scores_a[0], n_keep).tolist()
    pruned = copy.deepcopy(model)
    P.prune_model(pruned, None, mlp_ratio=0.5, method="weight", progress=False)
    assert pruned.config.intermediate_size == 32


# --------------------------------------------------------------------------- bad input


def test_bad_prune_flags_are_rejected_naming_each_flag(strong_dir, calib_jsonl):
    argv = as_flags(
        {
            "model.model_name_or_path": strong_dir,
            "data.dataset": calib_jsonl,
            "prune.mlp_ratio": "1.0",
            "prune.head_ratio": "-0.1",
            "prune.num_layers": "-1",
            "prune.method": "magnitude",
            "prune.calibration_samples": "0",
        }
    )
    with pytest.raises(ConfigError) as e:
        load_config(argv, task="prune")
    text = str(e.value)
    for flag in (
        *as_flags(
            {
                "prune.mlp_ratio": None,
                "prune.head_ratio": None,
                "prune.num_layers": None,
                "prune.method": None,
                "prune.calibration_samples": None,
                "prune.output_dir": None,
            }
        ),
    ):
        assert flag in text
    assert "[0, 1)" in text


def test_too_many_layers_and_non_empty_output_rejected(strong_dir, calib_jsonl, tmp_path):
    model, tok = _load(strong_dir)
    with pytest.raises(P.PruneError, match="--prune.num_layers"):
        P.prune_model(model, _calib(tok), num_layers=3, progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    cfg = load_config(_argv(strong_dir, calib_jsonl, str(busy)), task="prune")
    with pytest.raises(UserError, match="--prune.output_dir"):
        P.prune(cfg, progress=False)


@pytest.mark.main_leg
def test_cli_model_pruning_cannot_handle_is_one_error_line_exit_2(tiny_dir, calib_jsonl, tmp_path):
    """docs/failures.md "What happens when things go wrong": one ``error:`` line naming the flag, exit code 2, no
    traceback: more layers removed than a 2-layer model has, and a model that is not of the Llama family (GPT-2)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tiny import run_module

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    gpt2 = str(tmp_path / "gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256)).save_pretrained(
        gpt2
    )
    tok.save_pretrained(gpt2)
    cases = [
        (tiny_dir, ["--prune.num_layers", "5"], "--prune.num_layers: must be in [0, 1] (the model has 2 layers)"),
        (
            gpt2,
            ["--prune.mlp_ratio", "0.2"],
            f"--model.model_name_or_path {gpt2}: GPT2LMHeadModel is not a Llama-family causal LM",
        ),
    ]
    for i, (model, flags, says) in enumerate(cases):
        res = run_module(
            "openrlhf.cli.prune",
            [
                *as_flags(
                    {
                        "model.model_name_or_path": model,
                        "data.dataset": calib_jsonl,
                        "data.prompt_key": "prompt",
                        "prune.calibration_samples": "2",
                        "prune.output_dir": str(tmp_path / f"out{i}"),
                    }
                ),
                *flags,
            ],
        )
        assert res.returncode == 2, res.stderr[-3000:]
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and says in errors[0], res.stderr[-3000:]
        assert "Traceback" not in res.stderr
        assert not os.path.exists(tmp_path / f"out{i}")


def test_calibration_rows_with_responses_and_missing_prompt_key(strong_dir, tmp_path):
    from openrlhf.datasets.loading import DataError

    _, tok = _load(strong_dir)
    rows = [{"prompt": "Hi", "response": "Hello there."}, {"prompt": "Count to three."}]
    calib = P.build_calibration(rows, tok, DataConfig(apply_chat_template=True))
    assert calib.with_response == 1
    assert any(calib.response_masks[0]) and not any(calib.response_masks[1])
    with pytest.raises(DataError, match="row 1.*'question'"):
        P.build_calibration(rows, tok, DataConfig(apply_chat_template=True, prompt_key="question"), source="c.jsonl")


def test_saved_in_the_models_own_dtype(tiny_dir, calib_jsonl, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = str(tmp_path / "bf16")
    AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).save_pretrained(src)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(src)
    out = str(tmp_path / "out")
    P.prune(load_config(_argv(src, calib_jsonl, out, "--prune.mlp_ratio", "0.5"), task="prune"), progress=False)
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as st:
        assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.bfloat16}
