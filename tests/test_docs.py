"""The manual cannot rot: what README.md and docs/*.md show is checked against the code.

Checked, without loading a model or importing torch (``test_checks_import_no_torch`` runs them in a fresh
process and asserts it):

* Commands. Every ``python -m openrlhf.cli.NAME ...`` (also ``deepspeed ... --module openrlhf.cli.NAME``,
  ``torchrun ... -m openrlhf.cli.NAME`` and ``ray job submit ... -- python -m openrlhf.cli.NAME``) in a code
  block (``` fenced, or indented by 4 spaces) or in an inline code span: (a) the module exists; (b) a
  config-driven CLI (a task of ``config/schema.py:REGISTRY``) parses and validates its flags with
  ``load_config(argv, task, check_paths=False, check_packages=False)``; (c) a file tool (argparse through
  ``cli/common.py:ArgParser``: build_sets, convert_gguf, distill, eval_prompts, evaluate, lora_combiner,
  prepare_prompts) parses its flags with its own parser (caught in ``ArgParser.parse_args``, so the tool's
  body never runs). A failure names the doc file and line.
* Links. Every relative markdown link points to an existing file, and a ``#fragment`` to a heading there.
* Flags named in prose. Every ``--flag`` in an inline code span exists: a flag of some task, of a file tool,
  of a benchmark script, of quickstart.sh, of the external tools in :data:`EXTERNAL_FLAGS`, or one of the
  old / unsupported names the manual says are refused (:data:`REFUSED_FLAGS`, each checked to be refused).
* Paths. Every repository path (``examples/...``, ``benchmarks/...``, ``tests/...``, ``openrlhf/...``,
  ``docs/...``) in a code span or code block exists.

What is tolerated in a command, and nothing else (the placeholder rules):

* ``...`` (or ``...some words...``) elides flags: the command is partial, and a problem about a flag it does
  not give (a required flag left out) is tolerated; problems about the flags it gives are not.
* An inline code span is always partial (a fragment of a command inside a sentence).
* ``[`` and ``]`` around flags mark them optional: the brackets are dropped and the flags checked.
* ``$VAR`` is replaced by the value a ``VAR="..."`` line earlier in the same block gives. An unresolved
  ``$VAR``, an ALL-CAPS word (``N``, ``PATH``, ``T``) or a ``<...>`` word is a placeholder value: a task's flag
  given one is checked by name only (any problem about its value is tolerated); a file tool's flag given one
  gets a value of its type (its first choice, or 1 for numbers).
* A ``#`` comment and a shell operator (``&``, ``&&``, ``;``, ``|``, ``>``, ...) end a command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = "openrlhf.cli."

# Flags of the programs the manual shows that are not ours (checked by name only).
EXTERNAL_FLAGS = {
    "pip": {"--no-deps", "--no-build-isolation", "--quiet"},
    "deepspeed launcher": {"--num_gpus", "--master_addr", "--module", "--bind_cores_to_rank", "--num_nodes"},
    "torchrun": {"--nproc_per_node"},
    "ruff": {"--check"},
    "pytest": {"--durations"},
    "ray": {"--head", "--port", "--dashboard-host", "--address", "--runtime-env-json", "--working-dir"},
    "vllm": {
        "--tensor-parallel-size",
        "--port",
        "--dtype",
        "--host",
        "--served-model-name",
        "--max-model-len",
        "--enforce-eager",
        "--model",
    },
}

# Names the manual shows in order to say they are refused: (flag as written, a task that must refuse it, a value).
REFUSED_FLAGS = {
    "--beta": ("dpo", "0.1"),  # upstream's old flat name: the error names --model.beta
    "--pretrain": ("dpo", "m"),
    "--lora_rank": ("dpo", "8"),
    "--save_path": ("dpo", "out"),
    "--generate.num_engines": ("generate", "2"),  # renamed --vllm.num_engines
    "--generate.tp_size": ("generate", "2"),  # renamed --vllm.tensor_parallel_size
}

# Repository paths named in code: these prefixes are checked to exist, but for the paths of upstream OpenRLHF's
# repository that the manual names as such.
PATH_PREFIXES = ("examples/", "benchmarks/", "tests/", "openrlhf/", "docs/", ".ci/")
UPSTREAM_PATHS = {"examples/scripts/train_dpo_llama.sh"}


def doc_files() -> List[str]:
    """README.md and every docs/*.md, as paths relative to the repository."""
    return ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))


# ---- reading markdown ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Block:
    """A code block: its lines as (line number, text without the block's indent)."""

    lines: List[Tuple[int, str]]
    fenced: bool


def split_markdown(text: str) -> Tuple[List[Block], str]:
    """(the code blocks, the prose: the text with every code block's lines blanked, line numbers kept).

    A fence opens with ``` or ~~~ (up to 3 spaces before it) and closes with the same marker. An indented block
    is a run of lines indented by 4 or more spaces (blank lines inside it) that follows a blank line."""
    lines = text.split("\n")
    prose = list(lines)
    blocks: List[Block] = []
    i, prev_blank = 0, True
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if fence:
            marker = fence.group(1)
            body = []
            prose[i] = ""
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith(marker):
                body.append((i + 1, lines[i]))
                prose[i] = ""
                i += 1
            if i < len(lines):
                prose[i] = ""
            blocks.append(Block(body, fenced=True))
            i += 1
            prev_blank = False
            continue
        if prev_blank and line.startswith("    ") and line.strip():
            body = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append((i + 1, lines[i][4:]))
                prose[i] = ""
                i += 1
            while body and not body[-1][1].strip():
                body.pop()
            blocks.append(Block(body, fenced=False))
            prev_blank = True
            continue
        prev_blank = not line.strip()
        i += 1
    return blocks, "\n".join(prose)


def inline_spans(prose: str) -> Iterator[Tuple[int, str]]:
    """(line number, text) of every inline code span of the prose (a span may wrap onto the next line)."""
    for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", prose, flags=re.S):
        if "\n\n" not in m.group(2):
            yield prose.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split())


def logical_lines(block: Block) -> Iterator[Tuple[int, str]]:
    """The block's shell lines with ``\\`` continuations joined: (first line number, text)."""
    start, parts = None, []
    for number, text in block.lines:
        if start is None:
            start = number
        if text.rstrip().endswith("\\"):
            parts.append(text.rstrip()[:-1])
            continue
        parts.append(text)
        yield start, " ".join(parts)
        start, parts = None, []
    if parts:
        yield start, " ".join(parts)


_OPERATORS = set("&;|<>()")


def shell_words(line: str) -> List[str]:
    """A shell line as words (quotes removed, a ``#`` comment dropped, operators as words of their own);
    ``...some words...`` becomes one ``...``."""
    line = re.sub(r"\.\.\.[\w ]*?\.\.\.", " ... ", line)
    lex = shlex.shlex(line, posix=True, punctuation_chars="&;|<>()")
    lex.whitespace_split = True
    try:
        return list(lex)
    except ValueError:  # an unbalanced quote: not a shell line
        return []


# ---- the commands of the manual -------------------------------------------------------------------------


@dataclasses.dataclass
class Command:
    where: str  # file:line
    module: str  # openrlhf.cli.NAME
    args: List[str]
    partial: bool  # a fragment: flags it does not give may be missing


def commands_in_words(words: List[str], where: str, partial: bool, env: Dict[str, str]) -> List[Command]:
    """Every ``-m`` / ``--module openrlhf.cli.NAME`` invocation in one shell line, its arguments up to the next
    shell operator, with ``$VAR`` replaced from ``env``."""
    out = []
    for k, word in enumerate(words):
        if word not in ("-m", "--module") or k + 1 >= len(words) or not words[k + 1].startswith(CLI):
            continue
        args: List[str] = []
        for w in words[k + 2 :]:
            if w and set(w) <= _OPERATORS:
                break
            var = re.fullmatch(r"\$\{?(\w+)\}?", w)
            args += shlex.split(env[var.group(1)]) if var and var.group(1) in env else [w]
        out.append(Command(where, words[k + 1], args, partial))
    return out


def doc_commands(path: str) -> List[Command]:
    """The openrlhf.cli commands of one doc file (path relative to the repository)."""
    blocks, prose = split_markdown(open(os.path.join(REPO, path), encoding="utf-8").read())
    out: List[Command] = []
    for block in blocks:
        env: Dict[str, str] = {}
        for number, line in logical_lines(block):
            words = shell_words(line)
            if words and all(re.fullmatch(r"[A-Za-z_]\w*=.*", w, flags=re.S) for w in words):
                env.update(w.split("=", 1) for w in words)  # VAR="..." lines
                continue
            out += commands_in_words(words, f"{path}:{number}", False, env)
    for number, span in inline_spans(prose):
        if CLI in span:
            out += commands_in_words(shell_words(span), f"{path}:{number}", True, {})
    return out


def all_commands() -> List[Command]:
    return [c for path in doc_files() for c in doc_commands(path)]


def is_placeholder(word: str) -> bool:
    return word == "..." or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", word)) or word.startswith("<") or "$" in word


def _clean(args: List[str]) -> Tuple[List[str], bool]:
    """(the arguments without ``[``/``]`` marks, whether anything was elided). A ``...`` right after a flag may
    be that flag's value: it stays (a placeholder value, or dropped after a flag that takes none); every other
    ``...`` is dropped."""
    out, elided = [], False
    for a in args:
        if a == "...":
            elided = True
            if out and out[-1].startswith("--") and "=" not in out[-1]:
                out.append(a)
            continue
        a = a[1:] if a.startswith("[") else a
        a = a[:-1] if a.endswith("]") and "[" not in a else a
        if a:
            out.append(a)
    return out, elided


def _given(args: List[str]) -> Tuple[Set[str], Set[str]]:
    """(the flags given, the flags given a placeholder value), as dotted names without ``--``."""
    given, placeholders = set(), set()
    flag = ""
    for a in args:
        if a.startswith("--"):
            flag, _, inline = a[2:].partition("=")
            given.add(flag)
            if inline and is_placeholder(inline):
                placeholders.add(flag)
        elif flag and is_placeholder(a):
            placeholders.add(flag)
    return given, placeholders


def command_tasks() -> Dict[str, str]:
    """CLI module name -> its task, for the config-driven CLIs."""
    from openrlhf.config.schema import REGISTRY

    return {t.command: name for name, t in REGISTRY.items()}


def check_task_command(cmd: Command, task: str) -> List[str]:
    from openrlhf.config.parse import ConfigError, load_config

    args, elided = _clean(cmd.args)
    partial = cmd.partial or elided
    given, placeholders = _given(args)
    try:
        with _in_repo():
            load_config([a for a in args if a != "..."], task, check_paths=False, check_packages=False)
    except ConfigError as e:
        problems = e.problems
    else:
        return []
    bad = []
    for p in problems:
        m = re.match(r"--([\w.]+)[:=]", p)
        name = m.group(1) if m else None
        if name and "unknown flag" not in p:
            if name in placeholders or (partial and name not in given):
                continue
        bad.append(p)
    return bad


class _Parsed(Exception):
    """Raised out of ``ArgParser.parse_args`` (past the CLI's body, which never runs)."""

    def __init__(self, parser, error: Optional[str] = None):
        super().__init__(error or "parsed")
        self.parser = parser
        self.error = error


def _typed_placeholders(parser, args: List[str]) -> List[str]:
    """A placeholder value of a flag -> a value of the flag's type (its first choice, or 1 for numbers); an
    elided value (``...``) after a flag that takes none is dropped."""
    out: List[str] = []
    for a in args:
        action = parser._option_string_actions.get(out[-1].split("=")[0]) if out and out[-1][:2] == "--" else None
        if a == "..." and (action is None or action.nargs == 0):
            continue
        if action is not None and is_placeholder(a):
            if action.choices:
                a = str(list(action.choices)[0])
            elif action.type in (int, float):
                a = "1"
        out.append(a)
    return out


@contextlib.contextmanager
def _caught_parse(module: str, capture_only: bool = False):
    """While open, ``ArgParser.parse_args`` parses (placeholders typed) and raises :class:`_Parsed` with the
    parser and the parse error, if any; with ``capture_only`` it raises before parsing."""
    from openrlhf.cli.common import ArgParser
    from openrlhf.config.parse import ConfigError

    original = ArgParser.parse_args

    def parse_args(self, args=None, namespace=None):
        if capture_only:
            raise _Parsed(self)
        try:
            ns = original(self, _typed_placeholders(self, list(args or [])), namespace)
        except ConfigError as e:
            raise _Parsed(self, "; ".join(e.problems)) from None
        follow_up = getattr(sys.modules[module], "candidate_files", None)
        if follow_up is not None and getattr(ns, "candidate", None) is not None:
            try:  # evaluate's --candidate LABEL=FILE values, checked right after parsing
                follow_up(ns.candidate, self)
            except ConfigError as e:
                raise _Parsed(self, "; ".join(e.problems)) from None
        raise _Parsed(self)

    ArgParser.parse_args = parse_args
    try:
        yield
    finally:
        ArgParser.parse_args = original


def file_tool_parser(module: str, args: List[str], capture_only: bool = False) -> _Parsed:
    """Run ``module``'s ``main(args)`` until its ``ArgParser`` parses: the parser and the parse error, if any.
    AssertionError when the module parses with something else (its body would run: refused)."""
    mod = importlib.import_module(module)
    from openrlhf.cli.common import ArgParser

    assert ArgParser in vars(mod).values(), f"{module} does not parse with cli/common.py:ArgParser"
    with _caught_parse(module, capture_only), _in_repo():
        try:
            mod.main(args)
        except _Parsed as parsed:
            return parsed
    raise AssertionError(f"{module}.main() returned without parsing")


def check_file_tool_command(cmd: Command) -> List[str]:
    args, elided = _clean(cmd.args)
    parsed = file_tool_parser(cmd.module, args)
    if parsed.error is None:
        return []
    if (cmd.partial or elided) and "the following arguments are required" in parsed.error:
        return []
    return [parsed.error]


@contextlib.contextmanager
def _in_repo():
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(cwd)


def check_command(cmd: Command) -> List[str]:
    """Problems of one documented command, each prefixed with the doc file and line."""
    if importlib.util.find_spec(cmd.module) is None:
        return [f"{cmd.where}: no module {cmd.module}"]
    name = cmd.module[len(CLI) :]
    tasks = command_tasks()
    problems = check_task_command(cmd, tasks[name]) if name in tasks else check_file_tool_command(cmd)
    shown = " ".join(["python -m", cmd.module] + cmd.args)
    return [f"{cmd.where}: {p}\n    in: {shown}" for p in problems]


# ---- links, flags and paths -------------------------------------------------------------------------------


def heading_anchors(path: str) -> Set[str]:
    """GitHub's anchors of a markdown file's headings (lower case, punctuation but - and _ dropped, spaces to
    dashes; a repeated one gets -1, -2, ...)."""
    _, prose = split_markdown(open(path, encoding="utf-8").read())
    seen: Dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def link_problems(path: str) -> List[str]:
    full = os.path.join(REPO, path)
    _, prose = split_markdown(open(full, encoding="utf-8").read())
    prose = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), prose)  # a link inside code is not a link
    out = []
    for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", prose):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue  # http(s):, mailto:
        line = prose.count("\n", 0, m.start()) + 1
        file_part, _, fragment = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(full), file_part)) if file_part else full
        if not os.path.exists(dest):
            out.append(f"{path}:{line}: link to {target}: no such file")
        elif fragment and dest.endswith(".md") and fragment not in heading_anchors(dest):
            out.append(f"{path}:{line}: link to {target}: no heading #{fragment} in {os.path.relpath(dest, REPO)}")
    return out


def known_flags() -> Set[str]:
    """Every flag some program of the manual takes (with ``--``)."""
    from openrlhf.config.parse import task_flags
    from openrlhf.config.schema import TASKS

    flags = {"--config", "--help"}
    for task in TASKS:
        flags |= {"--" + f for f in task_flags(task)}
    tasks = command_tasks()
    for path in sorted(glob.glob(os.path.join(REPO, "openrlhf", "cli", "*.py"))):
        name = os.path.basename(path)[:-3]
        if name in tasks or name in ("__init__", "common"):
            continue
        parser = file_tool_parser(CLI + name, [], capture_only=True).parser
        flags |= {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
        flags |= set(parser._renamed)  # old spellings still taken (for one release)
    for path in glob.glob(os.path.join(REPO, "benchmarks", "*.py")):
        flags |= set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", open(path, encoding="utf-8").read()))
    flags |= set(re.findall(r"^\s*(--[\w-]+)\)", open(os.path.join(REPO, "quickstart.sh")).read(), flags=re.M))
    for names in EXTERNAL_FLAGS.values():
        flags |= names
    return flags


_FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w\-]*(?:\.[\w\-]+)*(?:/[A-Za-z_]+)*(?:\.\*)?)")


def prose_flags(path: str) -> Iterator[Tuple[int, str]]:
    """(line, flag) of every ``--flag`` in the prose's inline code spans; ``--a.b.c/d/e`` gives ``--a.b.c``,
    ``--a.b.d``, ``--a.b.e``."""
    _, prose = split_markdown(open(os.path.join(REPO, path), encoding="utf-8").read())
    for line, span in inline_spans(prose):
        for m in _FLAG.finditer(span):
            first, *others = m.group(1).rstrip(".").split("/")
            yield line, first
            for other in others:
                yield line, first.rsplit(".", 1)[0] + "." + other


def flag_problems(path: str, known: Set[str]) -> List[str]:
    out = []
    for line, flag in prose_flags(path):
        if flag in known or flag in REFUSED_FLAGS:
            continue
        if flag.endswith(".*") and any(k.startswith(flag[:-1]) for k in known):
            continue
        out.append(f"{path}:{line}: `{flag}` is no flag of any task, file tool, benchmark or quickstart.sh")
    return out


def path_problems(path: str) -> List[str]:
    blocks, prose = split_markdown(open(os.path.join(REPO, path), encoding="utf-8").read())
    texts = list(inline_spans(prose)) + [(n, t) for b in blocks if not b.fenced for n, t in b.lines]
    out = []
    for line, text in texts:
        for m in re.finditer(r"(?<![\w./-])((?:%s)[\w./-]*)" % "|".join(map(re.escape, PATH_PREFIXES)), text):
            p = m.group(1).rstrip(".,:;")
            rest = text[m.end() :]
            if "..." in p or rest[:1] in ("{", "*", "<", "$") or p.endswith("/") and rest[:1] == "<":
                continue
            if p not in UPSTREAM_PATHS and not os.path.exists(os.path.join(REPO, p)):
                out.append(f"{path}:{line}: {p}: no such file or folder in the repository")
    return out


def all_problems() -> List[str]:
    """Every problem of every doc file (what the tests below assert is empty, by kind)."""
    known = known_flags()
    out = []
    for c in all_commands():
        out += check_command(c)
    for path in doc_files():
        out += link_problems(path) + flag_problems(path, known) + path_problems(path)
    return out


# ---- the tests ---------------------------------------------------------------------------------------------


def test_docs_exist_and_show_commands():
    files = doc_files()
    assert "README.md" in files and len(files) > 1, files
    cmds = all_commands()
    modules = {c.module for c in cmds}
    # every kind of CLI is exercised: config-driven, file tool, a launcher form
    assert {CLI + "train_dadpo", CLI + "distill", CLI + "judge", CLI + "build_sets"} <= modules, sorted(modules)
    assert any(c.args and "--ds.zero_stage" in c.args for c in cmds)


def test_doc_commands_parse_and_validate():
    problems = [p for c in all_commands() for p in check_command(c)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", doc_files())
def test_links_point_to_files_and_headings(path):
    problems = link_problems(path)
    assert not problems, "\n".join(problems)


def test_flags_named_in_prose_exist():
    known = known_flags()
    problems = [p for path in doc_files() for p in flag_problems(path, known)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("flag", sorted(REFUSED_FLAGS))
def test_flags_the_manual_calls_refused_are_refused(flag):
    from openrlhf.config.parse import ConfigError, load_config

    task, value = REFUSED_FLAGS[flag]
    name = flag.replace(".*", ".lr")
    with pytest.raises(ConfigError) as e:
        load_config([name, value], task, check_paths=False, check_packages=False)
    assert any(p.startswith(name + ":") for p in e.value.problems), e.value.problems


def test_repository_paths_named_exist():
    problems = [p for path in doc_files() for p in path_problems(path)]
    assert not problems, "\n".join(problems)


def test_checks_import_no_torch():
    """The whole check in a fresh process: torch and transformers are never imported, no model is loaded."""
    code = (
        "import sys; sys.path.insert(0, 'tests'); import test_docs; "
        "n = len(test_docs.all_commands()); p = test_docs.all_problems(); "
        "print(n, len(p), 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
        check=True,
    ).stdout.split()
    assert int(out[0]) > 20 and out[1:] == ["0", "False", "False"], out


# ---- the checks fail on broken snippets ------------------------------------------------------------------


def _snippet(tmp_path, text: str) -> List[Command]:
    p = tmp_path / "snippet.md"
    p.write_text(text, encoding="utf-8")
    return doc_commands(str(p))  # an absolute path: the checks take those too


BROKEN = {
    "misspelt flag": "    python -m openrlhf.cli.train_dpo --model.model_name_or_path m --data.dataset d.jsonl \\\n"
    "      --train.batch_sise 8\n",
    "bad value": "    python -m openrlhf.cli.train_dadpo --model.model_name_or_path m --data.dataset d.jsonl \\\n"
    "      --teacher.model_name_or_path t --ds.zero_stage 5\n",
    "bad value in a partial command": "    python -m openrlhf.cli.train_dadpo ... --model.beta x\n",
    "flag of another task": "```bash\npython -m openrlhf.cli.train_sft ... --teacher.beta 1\n```\n",
    "missing required flag": "    python -m openrlhf.cli.generate --model.model_name_or_path m --data.dataset d.jsonl\n",
    "no such module": "    python -m openrlhf.cli.train_ppo --model.model_name_or_path m\n",
    "file tool, unknown flag": "    python -m openrlhf.cli.build_sets --teacher_responses a --student_responses b --output_dir o --promt_key k\n",
    "file tool, bad choice": "    python -m openrlhf.cli.eval_prompts --task mmlu --output p.jsonl\n",
    "file tool, bad candidate": "    python -m openrlhf.cli.evaluate --teacher.model_name_or_path t --teacher_responses r \\\n"
    "      --candidate nolabel --output_dir o\n",
    "under a launcher": "    deepspeed --num_gpus 2 --module openrlhf.cli.train_dadpo --ds.zero_stag 3 ...\n",
    "ray job": "    ray job submit --address http://H:8265 -- python -m openrlhf.cli.train_dadpo_ray ... --ray.adress x\n",
    "inline span": "Run `python -m openrlhf.cli.train_kto --kto.desirable_weight 1` now.\n",
    "variable": '    J="--judge.base_url http://x/v1 --judge.modle m"\n'
    "    python -m openrlhf.cli.judge --task mtbench --candidate a=f.jsonl --output_dir o $J\n",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_snippet_fails(tmp_path, case):
    cmds = _snippet(tmp_path, BROKEN[case])
    assert len(cmds) == 1, cmds
    problems = check_command(cmds[0])
    assert problems and problems[0].startswith(f"{cmds[0].where}: "), problems
    assert cmds[0].where.endswith(":1") or cmds[0].where.endswith(":2"), cmds[0].where


def test_placeholders_are_tolerated_only_as_documented(tmp_path):
    good = (
        '    J="--judge.base_url http://127.0.0.1:8000/v1 --judge.model m --output_dir report/judge"\n'
        "    python -m openrlhf.cli.judge --task mtbench --candidate daDPO=gen/a.jsonl $J   # a comment\n"
        "    python -m openrlhf.cli.train_dadpo ... --ds.lora.rank 16 \\\n"
        "      [--ds.lora.target_modules q_proj v_proj] [--ds.load_in_4bit]\n"
        "    python -m openrlhf.cli.generate --model.model_name_or_path M --data.dataset P \\\n"
        "      --generate.output_path OUT.jsonl --vllm.num_engines N\n"
        "    python -m openrlhf.cli.eval_prompts --task mtbench --output p.jsonl --max_items N &\n"
        "    torchrun --nproc_per_node N -m openrlhf.cli.train_dpo ...\n"
        "\n"
        "In prose, `python -m openrlhf.cli.distill --config ...` is a fragment.\n"
    )
    cmds = _snippet(tmp_path, good)
    assert [c.module[len(CLI) :] for c in cmds] == [
        "judge",
        "train_dadpo",
        "generate",
        "eval_prompts",
        "train_dpo",
        "distill",
    ]
    assert "--judge.model" in cmds[0].args and "#" not in " ".join(cmds[0].args)
    assert [p for c in cmds for p in check_command(c)] == []


def test_broken_links_flags_and_paths_fail(tmp_path):
    (tmp_path / "training.md").write_text("# Training\n\n## SFT (`python -m openrlhf.cli.train_sft`)\n")
    doc = tmp_path / "broken.md"
    doc.write_text(
        "# Title\n\nSee [a](training.md#no-such-heading), [b](nowhere.md), [c](#title), [d](training.md#training)\n"
        "and [e](training.md#sft-python--m-openrlhfclitrain_sft).\n\n"
        "Use `--train.batch_sise` or `--ds.zero_stage`, `--logger.wandb.key/org/grup` and `examples/configs/nothing.yaml`.\n"
    )
    links = link_problems(str(doc))
    assert [x.split(": ", 1)[1] for x in links] == [
        "link to training.md#no-such-heading: no heading #no-such-heading in "
        + os.path.relpath(str(tmp_path / "training.md"), REPO),
        "link to nowhere.md: no such file",
    ], links
    flags = flag_problems(str(doc), known_flags())
    assert [x.split(": ", 1)[1].split(" ")[0] for x in flags] == ["`--train.batch_sise`", "`--logger.wandb.grup`"]
    assert flags[0].startswith(f"{doc}:6:"), flags
    paths = path_problems(str(doc))
    assert len(paths) == 1 and "examples/configs/nothing.yaml" in paths[0], paths
