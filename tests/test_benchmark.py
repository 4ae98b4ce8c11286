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
