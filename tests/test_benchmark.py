"""benchmarks/dpo_throughput.py's handling of --model (the GPU script passes a hub id)."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))  # as when run as a script: its helpers beside it
    spec = importlib.util.spec_from_file_location(
        "dpo_throughput", os.path.join(ROOT, "benchmarks", "dpo_throughput.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_model_is_a_folder_or_a_fetched_hub_snapshot(tmp_path, monkeypatch):
    bench = _bench(monkeypatch)
    folder = tmp_path / "my_model"
    folder.mkdir()
    assert bench.resolve_model(str(folder)) == str(folder)

    fetched = []
    snapshot = str(tmp_path / "hub" / "snapshots" / "abc123")

    def snapshot_download(repo_id, allow_patterns=None):
        fetched.append(repo_id)
        if repo_id == "Qwen/Qwen2.5-1.5B-Instruct":
            return snapshot
        raise OSError("offline: cannot reach huggingface.co\nmore detail")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    # the GPU script's default MODEL: a hub id becomes the snapshot folder that copytree can copy
    assert bench.resolve_model("Qwen/Qwen2.5-1.5B-Instruct") == snapshot
    with pytest.raises(
        SystemExit,
        match=r"error: --model org/missing: not a local folder and not fetched from "
        r"the hub \(offline: cannot reach huggingface.co\); pass a local HF folder",
    ):
        bench.resolve_model("org/missing")
    with pytest.raises(SystemExit, match="error: --model ./nowhere: not a model folder"):
        bench.resolve_model("./nowhere")
    assert fetched == ["Qwen/Qwen2.5-1.5B-Instruct", "org/missing"]


# ---- benchmarks/gpu_throughput.py (issue 38: the one-GPU benchmark, checked here at tiny sizes) -----------


def _module(monkeypatch, name):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_models_have_the_public_checkpoints_parameter_counts(monkeypatch):
    """The config values written in the benchmark give Qwen2.5-1.5B-Instruct's and Qwen2.5-7B-Instruct's
    parameter counts (1,543,714,304 with tied embeddings; 7,615,616,512)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    bench = _module(monkeypatch, "gpu_throughput")
    counts = []
    for shape in (bench.QWEN25_1_5B_INSTRUCT, bench.QWEN25_7B_INSTRUCT):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(Qwen2Config(**shape))
        counts.append(sum(p.numel() for p in model.parameters()))
        assert model.config.num_key_value_heads == shape["num_key_value_heads"]
    assert counts == [1_543_714_304, 7_615_616_512]


def test_gpu_benchmark_rows_fit_their_length_and_spread_like_sharegpt(monkeypatch, tmp_path):
    """Every row's chat rendering fits --max_len, in the tokenizer the runs load (one token per word);
    lengths spread (first turns at 1024, longer second-turn prompts at 2048)."""
    import statistics

    bench = _module(monkeypatch, "gpu_throughput")
    tok = bench.make_tokenizer(str(tmp_path / "tok"), 300, bench.TINY_POLICY)
    firsts = bench.make_rows(tok, 40, 1024, second_turn=False, words=300, seed=1)
    seconds = bench.make_rows(tok, 40, 2048, second_turn=True, words=300, seed=2)
    for rows, max_len in ((firsts, 1024), (seconds, 2048)):
        for r in rows:
            for answer in (r["chosen"], r["rejected"]):
                msgs = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": answer}]
                n = len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
                assert len(r["prompt"].split()) + len(answer.split()) < n <= max_len
    p1 = [len(r["prompt"].split()) for r in firsts]
    p2 = [len(r["prompt"].split()) for r in seconds]
    answers = [len(r["chosen"].split()) for r in firsts]
    assert min(answers) < 100 < max(answers) and len(set(answers)) > 30
    assert statistics.median(p2) > 2 * statistics.median(p1)


@pytest.mark.main_leg
@pytest.mark.slow
def test_gpu_benchmark_runs_tiny_on_cpu_and_reports_every_configuration(tmp_path):
    """``gpu_throughput.py --tiny`` (fp32, CPU, 2 repeats): every configuration has its numbers, or says why
    it did not run (flash-attention: no GPU; TRL: when trl is not installed); the configurations saw the same
    real tokens per step (the same rows in the same order), the padded one some padding, the packed none."""
    import json
    import subprocess
    import sys

    out = tmp_path / "summary.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "benchmarks/gpu_throughput.py", "--tiny", "--threads", "1", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("SUMMARY "))
    summary = json.loads(line[len("SUMMARY ") :])
    assert summary == json.loads(out.read_text())
    has_trl = importlib.util.find_spec("trl") is not None
    configs = summary["configs"]
    for L in (128, 256):
        assert configs[f"ours_dpo_packed_flash@{L}"] == {
            "status": "skipped",
            "reason": "flash-attention needs a CUDA GPU",
        }
        ran = ["ours_dpo_padded", "ours_dpo_packed", "ours_dadpo_online", "ours_dadpo_cached"]
        if has_trl:
            ran.append("trl_dpo")
        else:
            assert configs[f"trl_dpo@{L}"]["status"] == "skipped" and "trl" in configs[f"trl_dpo@{L}"]["reason"]
        tokens = set()
        for c in ran:
            t = configs[f"{c}@{L}"]
            assert t["status"] == "ran" and t["repeats"] == 2, (c, t)
            for key in ("real_tok_s", "s_per_step"):
                assert t[key]["n"] == 2 and 0 < t[key]["min"] <= t[key]["median"] <= t[key]["max"], (c, key)
            assert t["mfu"] > 0 and t["model_tflops"] > 0 and t["peak_memory_mb"] > 0, c
            tokens.add(round(t["real_tokens_per_step"], 6))
        assert len(tokens) == 1, tokens  # the same rows, in the same order, counted alike (TRL's own count too)
        assert configs[f"ours_dpo_padded@{L}"]["padding"] > 0 and configs[f"ours_dpo_packed@{L}"]["padding"] == 0
        labels = {r["label"] for r in summary["ratios"]}
        assert f"{L}: real tok/s, ours packed (sdpa) / padded" in labels
        assert f"{L}: s/step, daDPO online 7B teacher / DPO padded" in labels
        assert (f"{L}: real tok/s, ours DPO padded / TRL" in labels) == has_trl
    assert summary["settings"]["repeats_done"] == 2 and summary["matmul_peak_tflops"]["median"] > 0
    for r in summary["ratios"]:
        assert r["lo"] <= r["ratio"] <= r["hi"] and r["n"] == [2, 2]


# ---- benchmarks/gpu_check.py (what a session with a GPU machine runs first) -----------------------------


def _wheel(folder, name="gcheck_demo", version="0.1"):
    """A minimal pure-Python wheel of one module ``name`` (``__version__`` = ``version``)."""
    import zipfile

    dist = f"{name}-{version}.dist-info"
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return path


def test_gpu_check_setup_installs_missing_wheels_once_into_its_own_folder(monkeypatch, tmp_path):
    """A carried wheel of a package this Python lacks is installed (offline, into --site) and imports in the
    parts' processes; a second run finds it there and installs nothing."""
    import types

    check = _module(monkeypatch, "gpu_check")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the same answer on a GPU machine
    monkeypatch.setattr(check, "PACKAGES", {"torch": "torch", "gcheck-demo": "gcheck_demo"})
    wheels = tmp_path / "whl"
    wheels.mkdir()
    name = os.path.basename(_wheel(str(wheels)))
    a = types.SimpleNamespace(wheels=str(wheels), site=str(tmp_path / "site"), out=str(tmp_path))
    log = check.Log(str(tmp_path / "log.txt"))
    first = check.setup(a, log, 120)
    assert first["installed"] == [name]
    assert first["probe"]["packages"]["gcheck-demo"] == "0.1"  # imported from --site by a child process
    assert first["status"] == "FAIL" and "no CUDA GPU visible" in first["reason"]
    second = check.setup(a, log, 120)
    assert second["installed"] == [] and second["already_here"] == [f"gcheck-demo in {a.site}"]


def test_gpu_check_part_passes_only_on_tests_that_ran(monkeypatch, tmp_path):
    """A part's status from its pytest run: a failure is FAIL naming the test; skipped and deselected tests are
    listed as not run with their reasons (PASS on the rest); nothing run is SKIPPED, never PASS."""
    import types

    check = _module(monkeypatch, "gpu_check")
    tests = tmp_path / "t"
    tests.mkdir()
    (tests / "pytest.ini").write_text("[pytest]\n")  # the rootdir, wherever the repository and tmp_path lie
    (tests / "test_demo.py").write_text(
        "import os, pytest\n"
        "def test_ok():\n    pass\n"
        "def test_needs_pkg():\n    pytest.importorskip('no_such_package_here')\n"
        "def test_bad():\n    assert os.environ.get('DEMO_OK') == '1'\n"
    )
    a = types.SimpleNamespace(site=str(tmp_path / "site"), out=str(tmp_path))
    log = check.Log(str(tmp_path / "log.txt"))
    target = [str(tests / "test_demo.py")]
    res = check.run_pytest(a, log, "x", target, 120, {}, marker="")
    assert res["status"] == "FAIL" and "test_bad" in res["reason"] and "1 passed, 1 failed, 1 not run" in res["reason"]
    monkeypatch.setenv("DEMO_OK", "1")
    res = check.run_pytest(a, log, "x", target, 120, {}, marker="")
    assert res["status"] == "PASS" and res["reason"] == "2 passed, 0 failed, 1 not run"
    assert len(res["not_run"]) == 1 and "no_such_package_here" in res["not_run"][0]
    bad = "test_demo.py::test_ok"  # a node id (relative to pytest's rootdir: the folder of its pytest.ini)
    res = check.run_pytest(a, log, "x", target, 120, {bad: "why not"}, k="ok or needs_pkg", marker="")
    assert res["status"] == "SKIPPED" and f"{bad} (why not)" in res["reason"]
    assert "no_such_package_here" in res["reason"]


def test_gpu_check_leaves_out_the_tests_of_packages_it_lacks_by_their_real_ids(monkeypatch):
    """Part a2 deselects the GPU tests of packages that do not import, by node ids that name real tests."""
    import re
    import types

    check = _module(monkeypatch, "gpu_check")
    seen = {}
    monkeypatch.setattr(
        check, "run_pytest", lambda a, log, name, targets, timeout, deselect, **kw: seen.update(deselect)
    )
    probe = {"packages": {"bitsandbytes": "missing: ModuleNotFoundError: x", "flash-attn": "missing: ImportError: y"}}
    check.part_a2(types.SimpleNamespace(), None, 100, probe)
    assert len(seen) == 2 and all("is not importable here" in why for why in seen.values())
    for node in seen:
        path, test = node.split("::")
        assert re.search(rf"^def {test}\(", open(os.path.join(ROOT, path)).read(), re.M), node


def test_gpu_check_without_a_gpu_passes_no_part(monkeypatch, tmp_path):
    check = _module(monkeypatch, "gpu_check")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(check, "PACKAGES", {"torch": "torch"})
    flags = ["--out", str(tmp_path), "--wheels", str(tmp_path / "none"), "--site", str(tmp_path / "site")]
    rc = check.main(["--parts", "setup,a1,a2,b,c,d", *flags])
    import json

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 1 and [p["part"] for p in report["parts"]] == ["setup", "a1", "a2", "b", "c", "d"]
    assert report["parts"][0]["status"] == "FAIL"
    assert all(p["status"] == "SKIPPED" and "no CUDA GPU" in p["reason"] for p in report["parts"][1:])
    assert "summary" in (tmp_path / "gpu_check.log").read_text()
