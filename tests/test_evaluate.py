"""Offline evaluation: ROUGE-L by hand, teacher NLL against a direct computation, report files, bad ids."""

import json
import os
import random
import shutil

import pytest
import torch

from openrlhf.eval.offline import evaluate_responses, lcs_length, rouge_l, words

from tiny import PREF_ROWS, as_flags, write_jsonl


def _lcs_dp(a, b):
    """Textbook O(n m) dynamic programme, to check the bit-parallel version."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_rouge_l_hand_worked():
    r = rouge_l("the cat sat on the mat", "the cat is on the mat")
    assert r["lcs"] == 5  # the cat on the mat
    assert r["precision"] == pytest.approx(5 / 6) and r["recall"] == pytest.approx(5 / 6)
    assert r["f1"] == pytest.approx(5 / 6)

    # Different lengths: candidate 4 words, reference 5, LCS "the mat" = 2.
    r = rouge_l("The MAT, the end!", "a cat on the mat")
    assert words("The MAT, the end!") == ["the", "mat", "the", "end"]
    assert r["lcs"] == 2
    assert (r["precision"], r["recall"]) == (pytest.approx(2 / 4), pytest.approx(2 / 5))
    assert r["f1"] == pytest.approx(4 / 9)  # 2 * 0.5 * 0.4 / 0.9

    assert rouge_l("a b c", "d e f")["f1"] == 0.0
    assert rouge_l("", "")["f1"] == 1.0 and rouge_l("", "x")["f1"] == 0.0
    assert rouge_l("Same text.", "same TEXT")["f1"] == 1.0


def test_lcs_bit_parallel_matches_dynamic_programme():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        assert lcs_length(a, b) == _lcs_dp(a, b)
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4


@pytest.fixture()
def response_files(tmp_path):
    rows = [
        {"id": i, "prompt": p, "response": c, "finish_reason": "stop", "response_tokens": 5, "model": "t"}
        for i, (p, c, _) in enumerate(PREF_ROWS)
    ]
    teacher = write_jsonl(str(tmp_path / "teacher.jsonl"), rows)
    same = write_jsonl(str(tmp_path / "same.jsonl"), list(reversed(rows)))  # order does not matter
    worse = write_jsonl(
        str(tmp_path / "worse.jsonl"),
        [dict(r, response=PREF_ROWS[r["id"]][2], finish_reason="length" if r["id"] < 2 else "stop") for r in rows],
    )
    return {"teacher": teacher, "same": same, "worse": worse, "rows": rows, "dir": tmp_path}


def _direct_nll(model_dir, prompt, response, cut=False):
    """Teacher NLL of one response, straight from transformers (cut: without the closing tokens)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    msgs = [{"role": "user", "content": prompt}]
    p_text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    f_text = tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    p_ids = tok(p_text, add_special_tokens=False)["input_ids"]
    f_ids = tok(f_text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([f_ids])).logits[0].float(), -1)
    n = len(p_ids)
    end = len(tok(p_text + response, add_special_tokens=False)["input_ids"]) if cut else len(f_ids)
    assert end < len(f_ids) or not cut
    nll = [-logp[t - 1, f_ids[t]].item() for t in range(n, end)]
    return sum(nll), len(nll)


def test_evaluate_writes_reports_and_matches_direct_nll(tiny_teacher_other_family, response_files):
    out = str(response_files["dir"] / "report")
    teacher = tiny_teacher_other_family  # its own (Gemma-like) template and vocabulary
    report = evaluate_responses(
        teacher,
        response_files["teacher"],
        {"same": response_files["same"], "dSFT": response_files["worse"]},
        out,
        batch_size=3,
        progress=False,
    )
    for name in ("report.json", "report.md", "report.png", "scores.jsonl"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert json.load(open(os.path.join(out, "report.json")))["models"].keys() == {"teacher", "same", "dSFT"}
    md = open(os.path.join(out, "report.md")).read()
    assert "| dSFT |" in md and "ROUGE-L" in md

    same, worse, ref = report["models"]["same"], report["models"]["dSFT"], report["models"]["teacher"]
    assert same["rouge_l_f1"] == 1.0 and ref["rouge_l_f1"] == 1.0
    assert worse["rouge_l_f1"] < 0.5
    assert same["teacher_nll"] == pytest.approx(ref["teacher_nll"], abs=1e-5)
    assert worse["truncated"] == pytest.approx(2 / len(PREF_ROWS)) and same["truncated"] == 0.0

    # One row against transformers directly; then the row and token averages.
    per_row = [json.loads(line) for line in open(os.path.join(out, "scores.jsonl"))]
    s, n = _direct_nll(teacher, PREF_ROWS[3][0], PREF_ROWS[3][2])
    row3 = next(r for r in per_row if r["model"] == "dSFT" and r["id"] == 3)
    assert row3["teacher_tokens"] == n
    assert row3["teacher_nll"] == pytest.approx(s / n, rel=1e-4)
    # Row 0 was cut off by the token limit: the closing "<end_of_turn>\n" is not scored.
    s, n = _direct_nll(teacher, PREF_ROWS[0][0], PREF_ROWS[0][2], cut=True)
    row0 = next(r for r in per_row if r["model"] == "dSFT" and r["id"] == 0)
    assert row0["teacher_tokens"] == n
    assert row0["teacher_nll"] == pytest.approx(s / n, rel=1e-4)
    rows = [r for r in per_row if r["model"] == "dSFT"]
    assert worse["teacher_nll"] == pytest.approx(sum(r["teacher_nll"] for r in rows) / len(rows), rel=1e-6)
    tok_mean = sum(r["teacher_nll"] * r["teacher_tokens"] for r in rows) / sum(r["teacher_tokens"] for r in rows)
    assert worse["teacher_nll_tokens"] == pytest.approx(tok_mean, rel=1e-6)
    assert worse["mean_words"] == pytest.approx(sum(len(words(b)) for _, _, b in PREF_ROWS) / len(PREF_ROWS))


def test_missing_ids_name_the_file_and_count(tiny_dir, response_files):
    from openrlhf.datasets.loading import DataError

    short = write_jsonl(str(response_files["dir"] / "short.jsonl"), response_files["rows"][:5])
    with pytest.raises(DataError, match=r"short\.jsonl.*3 of the teacher's 8 ids are missing"):
        evaluate_responses(
            tiny_dir, response_files["teacher"], {"base": short}, str(response_files["dir"] / "o"), progress=False
        )
    other = write_jsonl(
        str(response_files["dir"] / "other.jsonl"),
        [dict(r, prompt="something else") if r["id"] == 4 else r for r in response_files["rows"]],
    )
    with pytest.raises(DataError, match=r"other\.jsonl: row 5 .*another prompt"):
        evaluate_responses(
            tiny_dir, response_files["teacher"], {"base": other}, str(response_files["dir"] / "o"), progress=False
        )
    with pytest.raises(ValueError, match="reserved"):
        evaluate_responses(tiny_dir, response_files["teacher"], {"teacher": short}, str(response_files["dir"] / "o"))


def test_bad_options_ids_outside_the_prompt_file_and_an_unusable_teacher_are_refused(
    tiny_dir, response_files, monkeypatch
):
    """No candidate, a batch size below 1, teacher ids that the held-out prompt file lacks, a teacher folder
    whose tokenizer has no chat template (or, scoring plain text, that has no model): one DataError each,
    the cheap ones before any model loads."""
    import openrlhf.eval.offline as ev
    from openrlhf.datasets.loading import DataError

    from tiny import make_tokenizer

    d, teacher = response_files["dir"], response_files["teacher"]
    real_load = ev.AutoModelForCausalLM.from_pretrained
    loads = []

    def counting(*a, **k):
        loads.append(a)
        return real_load(*a, **k)

    monkeypatch.setattr(ev.AutoModelForCausalLM, "from_pretrained", counting)
    no_template = str(d / "no_template")
    make_tokenizer(no_template, style="none")  # a tokenizer without a chat template; a model config, no weights
    shutil.copy(os.path.join(tiny_dir, "config.json"), no_template)
    out, cand = str(d / "o"), {"same": response_files["same"]}
    with pytest.raises(DataError, match=r"^--candidate: give at least one candidate response file \(label=FILE\)$"):
        evaluate_responses(no_template, teacher, {}, out)
    with pytest.raises(DataError, match=r"^--train.micro_batch_size: must be >= 1, got 0$"):
        evaluate_responses(no_template, teacher, cand, out, batch_size=0)
    held_out = write_jsonl(str(d / "held_out.jsonl"), [{"prompt": f"p{i}"} for i in range(5)])  # ids: positions
    with pytest.raises(
        DataError, match=r"teacher\.jsonl: 3 ids are not in --prompts .*held_out\.jsonl \(e\.g\. \['5', '6', '7'\]\)"
    ):
        evaluate_responses(no_template, teacher, cand, out, prompts=held_out)
    with pytest.raises(
        DataError, match=r"the tokenizer has no chat template; give one with --teacher.tokenizer_chat_template"
    ):
        evaluate_responses(no_template, teacher, cand, out)
    assert loads == []
    with pytest.raises(DataError, match=r"^--teacher.model_name_or_path: cannot load a model from .*no_template"):
        evaluate_responses(no_template, teacher, cand, out, apply_chat_template=False, progress=False)
    assert not os.path.exists(out)


def test_cli_parses_repeated_candidates(tiny_dir, response_files, capsys):
    from openrlhf.cli.evaluate import main

    out = str(response_files["dir"] / "cli")
    main(
        [
            "--teacher.model_name_or_path",
            tiny_dir,
            "--teacher_responses",
            response_files["teacher"],
            "--candidate",
            f"base={response_files['worse']}",
            "--candidate",
            f"daDPO={response_files['same']}",
            "--output_dir",
            out,
        ]
    )
    report = json.load(open(os.path.join(out, "report.json")))
    assert list(report["models"]) == ["teacher", "base", "daDPO"]
    assert "| daDPO | 1.0000 [1.0000, 1.0000] |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(
            as_flags(
                {
                    "teacher.model_name_or_path": tiny_dir,
                    "teacher_responses": response_files["teacher"],
                    "candidate": "nolabel",
                    "output_dir": out,
                }
            )
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid configuration (1 problem):") and "expected LABEL=FILE" in err


def test_intervals_and_the_paired_comparison_in_the_report(tiny_teacher_other_family, response_files):
    """With a daDPO candidate: every metric has its bootstrap interval, and daDPO is compared prompt by prompt."""
    out = str(response_files["dir"] / "paired")
    report = evaluate_responses(
        tiny_teacher_other_family,
        response_files["teacher"],
        {"daDPO": response_files["same"], "dSFT": response_files["worse"]},
        out,
        batch_size=3,
        progress=False,
    )
    n = len(PREF_ROWS)
    ci = report["models"]["dSFT"]["ci"]["rouge_l_f1"]
    assert ci["n"] == n and ci["lo"] <= report["models"]["dSFT"]["rouge_l_f1"] <= ci["hi"]
    assert report["models"]["daDPO"]["ci"]["rouge_l_f1"] == {"mean": 1.0, "lo": 1.0, "hi": 1.0, "n": n}
    cmp = report["paired"]["dSFT"]["rouge_l_f1"]
    # daDPO answers exactly like the teacher (F1 1.0 on every prompt), dSFT never does: all wins.
    assert (cmp["wins"], cmp["ties"], cmp["losses"]) == (n, 0, 0)
    assert cmp["p_sign"] == pytest.approx(2 / 2**n)
    assert list(report["paired"]) == ["dSFT"] and report["compare_to"] == "daDPO"
    md = open(os.path.join(out, "report.md")).read()
    assert "daDPO against each model" in md and f"| dSFT | {n}/0/0 |" in md


def test_bootstrap_and_paired_statistics_by_hand():
    from openrlhf.utils.stats import bootstrap_ci, paired_comparison, sign_test_p

    assert sign_test_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(3, 3) == 1.0
    assert bootstrap_ci([2.0, 2.0, None, float("nan"), 2.0]) == {"mean": 2.0, "lo": 2.0, "hi": 2.0, "n": 3}
    wide = bootstrap_ci(list(range(100)))
    assert wide["mean"] == 49.5 and 40 < wide["lo"] < 49.5 < wide["hi"] < 59
    r = paired_comparison([1, 2, 3, 4], [0, 2, 1, 5])  # differences 1, 0, 2, -1
    assert (r["wins"], r["ties"], r["losses"], r["diff"]) == (2, 1, 1, 0.5)
    assert r["p_sign"] == 1.0
    lower = paired_comparison([1, 2, 3, 4], [0, 2, 1, 5], higher_is_better=False)
    assert (lower["wins"], lower["losses"]) == (1, 2)
    # Ten prompts, all better: the exact sign test gives 2 / 2^10; the permutation test about the same.
    ten = paired_comparison([1.0 + i for i in range(10)], [0.5 + i for i in range(10)])
    assert ten["p_sign"] == pytest.approx(2 / 1024) and ten["p_perm"] < 0.01
    assert ten["diff_lo"] == ten["diff_hi"] == 0.5


def test_evaluation_releases_the_teacher_and_runs_fp32_on_cpu(tiny_dir, response_files, monkeypatch):
    """The report stages run before vLLM engines on the same GPU: no reference to the teacher survives the
    call and the CUDA allocator's cache is emptied (pretended CUDA here); a CPU scores in fp32 whatever
    the run's dtype (bf16 on a GPU)."""
    import gc
    import weakref

    import torch
    import transformers

    from openrlhf.eval import offline as ev

    loaded, released = [], []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def from_pretrained(path, **kw):
        model = real(path, **kw)
        loaded.append((kw.get("dtype"), weakref.ref(model)))
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    real_release = ev.release_memory
    monkeypatch.setattr(ev, "release_memory", lambda device: (released.append(str(device)), real_release(device)))
    out = str(response_files["dir"] / "released")
    ev.evaluate_responses(
        tiny_dir,
        response_files["teacher"],
        {"same": response_files["same"]},
        out,
        dtype="bf16",
        device="cpu",
        progress=False,
    )
    gc.collect()
    assert [d for d, _ in loaded] == [torch.float32] and released == ["cpu"]
    assert loaded[0][1]() is None  # the teacher is gone once the call returns

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    real_release(torch.device("cpu"))
    assert emptied == []
    real_release(torch.device("cuda", 0))
    assert emptied == [True]
