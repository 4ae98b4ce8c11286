"""Responses of one model to every prompt of a dataset (steps 1 and 2 of Algorithm 1:
the teacher's and the student's greedy responses). Example::

    python -m openrlhf.cli.generate --model.model_name_or_path ./teacher \\
        --data.dataset prompts/train.jsonl --data.apply_chat_template \\
        --generate.max_new_tokens 512 --generate.batch_size 8 --ds.param_dtype fp32 \\
        --generate.output_path gen/teacher.jsonl

Prompts: ``--data.prompt_key`` (a string or chat messages), else the first human turn
of a ShareGPT ``conversations`` list (see :mod:`openrlhf.generation.prompts`).
Output rows (the id always under ``id``) and resuming: see
:mod:`openrlhf.generation.outputs`. A rerun with the same output path skips the ids
already there (an id already answered for another prompt is an error); when every
prompt is answered the file is rewritten (atomically) in the order of the prompt file.

Sampling (``--generate.temperature`` > 0) is seeded with ``--train.seed``. The vllm backend seeds each
sampled answer on its own (``--train.seed``, the row's id and the turn): the same answer whatever shares
its batch, the batch size, the number of engines, or a resume. The hf backend seeds its one random stream
at the start of each setting: an uninterrupted run is reproducible; a resumed run samples its remaining
prompts afresh.

A prompt row may carry its own ``temperature`` and ``max_new_tokens`` (the MT-Bench / AlpacaEval
prompt files of ``python -m openrlhf.cli.eval_prompts`` carry FastChat's: by MT-Bench category, 1024
new tokens); they apply to that row unless ``--generate.row_settings false``. The model (each engine)
is loaded once for all settings: vLLM answers rows of every setting in the same batches; the hf backend
answers one setting after another (see :mod:`openrlhf.generation.sampling`).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Tuple

from tqdm import tqdm

from openrlhf.config.schema import GenerateTaskConfig
from openrlhf.datasets.loading import DataError, load_rows
from openrlhf.datasets.templates import PromptRenderer
from openrlhf.datasets.tokenizer import data_tokenizer, pad_token_id
from openrlhf.generation.hf_backend import HFGenerator
from openrlhf.generation.outputs import ID_KEY, ResultsFile, trim_response
from openrlhf.generation.prompts import (
    TURNS_KEY,
    PromptItem,
    extract_prompts,
    generation_config_eos,
    jsonl_line_numbers,
    render_prompt_ids,
    stop_token_ids,
)
from openrlhf.generation.ray_engines import RayGenerator
from openrlhf.generation.sampling import Sampling, row_seed
from openrlhf.generation.served_backend import ServedGenerator
from openrlhf.generation.vllm_backend import VLLMGenerator, VLLMSettings, resolve_backend
from openrlhf.utils.errors import Interrupted
from openrlhf.utils.run_folder import lock_output_file
from openrlhf.utils.served import Endpoint, ServedClient


def _backend(cfg: GenerateTaskConfig, tokenizer, stop_ids, log):
    """The generator of --generate.backend (hf, vllm, or served: the server answers), in this process (or its engine processes) or as
    Ray actors (--generate.ray); ``.run(list of prompt ids)`` yields batches of (position, token ids,
    finish reason or None)."""
    g = cfg.generate
    if g.ray:
        return RayGenerator(cfg, stop_ids, pad_token_id(tokenizer), log=log)
    if g.backend == "served":
        return ServedGenerator(Endpoint.of(cfg.served, "--served.base_url"), g, stop_ids, log)
    if g.backend == "hf":
        return HFGenerator.from_config(cfg, pad_id=pad_token_id(tokenizer), stop_ids=stop_ids, log=log)

    return VLLMGenerator(VLLMSettings.from_config(cfg, stop_ids), num_engines=cfg.vllm.num_engines)


def row_sampling(cfg: GenerateTaskConfig, rows, items) -> List[Tuple[float, int]]:
    """(temperature, max_new_tokens) of every item: the row's own ``temperature`` / ``max_new_tokens``
    when it has them and ``--generate.row_settings`` is on (the benchmark prompt files of
    ``eval_prompts`` carry FastChat's settings), else ``--generate.temperature`` /
    ``--generate.max_new_tokens``. A bad value is a DataError naming the row."""
    g = cfg.generate
    out, bad = [], []
    for it in items:
        row = rows[it.index] if g.row_settings else {}
        t, m = row.get("temperature", g.temperature), row.get("max_new_tokens", g.max_new_tokens)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            bad.append(f"{it.where}: temperature must be a number >= 0, got {t!r}")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            bad.append(f"{it.where}: max_new_tokens must be an integer >= 1, got {m!r}")
        out.append((float(t), m))
    if bad:
        raise DataError(
            f"--data.dataset {cfg.data.dataset}: {len(bad)} bad sampling settings (or set "
            f"--generate.row_settings false to use --generate.*): " + "; ".join(bad[:5])
        )
    return out


def log_settings(cfg: GenerateTaskConfig, rows, items, pending: List[int], log=print) -> None:
    """One line per distinct (temperature, max_new_tokens) of the pending rows' own settings (those that
    differ from ``--generate.*``), in order of first appearance."""
    settings = row_sampling(cfg, rows, items)
    counts = Counter(settings[k] for k in pending)
    g = cfg.generate
    for temp, max_new in counts:
        if (temp, max_new) != (g.temperature, g.max_new_tokens):
            log(
                f"generate: {counts[temp, max_new]} prompts with their rows' own settings: "
                f"{'greedy' if temp == 0 else f'sampling T={temp}'}, max_new_tokens {max_new}"
            )


def prompt_sampling(cfg: GenerateTaskConfig, rows, items, positions: List[int], turn: int = 0) -> List[Sampling]:
    """The sampling of turn ``turn`` of each item at ``positions``: its row's settings (:func:`row_sampling`),
    a sampled one with its own seed (``--train.seed``, the row's id, the turn)."""
    settings = row_sampling(cfg, rows, items)
    seed = cfg.train.seed
    return [
        Sampling(t, m, row_seed(seed, items[k].id, turn) if t > 0 else None)
        for k in positions
        for t, m in [settings[k]]
    ]


def turn_messages(turns: List[str], answers: List[str]) -> List[Dict[str, str]]:
    """The chat history of the next turn of a multi-turn prompt: each earlier user turn with its answer,
    then the next user turn (``len(answers) < len(turns)``)."""
    msgs: List[Dict[str, str]] = []
    for q, a in zip(turns[: len(answers)], answers, strict=True):
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": turns[len(answers)]})
    return msgs


def context_problems(max_model_len: int, needs, log=print, served: str = "") -> None:
    """vLLM refuses a prompt that fills its context (``--vllm.max_model_len``, or ``served``: the served
    model's, named so) and stops a response at the context's end. ``needs``: (where, prompt tokens,
    max_new_tokens) of each prompt, the prompt at its longest (a multi-turn prompt's last turn with every
    earlier answer at max_new_tokens). A prompt that may fill the context is a DataError naming the rows and
    the length that fits them, before any model is loaded or asked; prompts whose answer may be cut by the
    context are counted in one line."""
    if not max_model_len or max_model_len <= 0:
        return
    what = f"{served}: the served max_model_len" if served else "--vllm.max_model_len"
    too_long = [(w, p, m) for w, p, m in needs if p >= max_model_len]
    if too_long:
        need = max(p + m for _, p, m in needs)
        fix = (
            f"Serve the model with --max-model-len {need} (the longest prompt + max_new_tokens here)"
            if served
            else f"Set --vllm.max_model_len {need} (the longest prompt + max_new_tokens here) or 0 for the "
            "model's own context"
        )
        raise DataError(
            f"{what} {max_model_len}: {len(too_long)} of {len(needs)} prompts may fill vLLM's "
            "context, which refuses them: "
            + "; ".join(f"{w}: {p} prompt tokens" for w, p, _ in too_long[:5])
            + ". "
            + fix
        )
    cut = sum(1 for _, p, m in needs if p + m > max_model_len)
    if cut:
        log(
            f"generate: {cut} of {len(needs)} prompts + max_new_tokens may exceed {what} "
            f"{max_model_len}: vLLM stops those responses at the context's end (finish_reason length)"
        )


def longest_prompts(cfg: GenerateTaskConfig, renderer: PromptRenderer, rows, items, pending, prompt_ids):
    """(where, prompt tokens, max_new_tokens) of each pending prompt at its longest: a multi-turn prompt's
    last turn with every earlier answer at max_new_tokens (an empty answer's template tokens counted)."""
    sampling = row_sampling(cfg, rows, items)
    if not any(items[k].multi_turn for k in pending):
        return [(items[k].where, len(prompt_ids[k]), sampling[k][1]) for k in pending]
    texts = [
        renderer.render_prompt(turn_messages(items[k].prompt, [""] * (len(items[k].prompt) - 1)), items[k].where)
        for k in pending
    ]
    out = []
    for k, ids in zip(pending, renderer.prompt_text_ids(texts), strict=True):
        earlier, max_new = len(items[k].prompt) - 1, sampling[k][1]
        where = items[k].where + (f" (turn {earlier + 1}, earlier answers at {max_new} tokens)" if earlier else "")
        out.append((where, len(ids) + earlier * max_new, max_new))
    return out


@dataclasses.dataclass
class _Run:
    """What the steps of one run share: settings, prompts, output file, answered rows, pending prompts, counts."""

    cfg: GenerateTaskConfig
    tokenizer: Any
    rows: List[dict]
    items: List[PromptItem]
    multi: bool
    prompt_ids: List[List[int]]  # the rendered prompts (single-turn; a multi-turn prompt is rendered per turn)
    stop_ids: List[int]
    out: ResultsFile
    finished: Dict[Any, dict]
    pending: List[int]  # positions in items
    already_done: int
    log: Callable[[str], None]
    new_tokens: int = 0
    elapsed: float = 0.0


def generate(cfg: GenerateTaskConfig, log=print) -> Dict[str, Any]:
    """Generate, append to ``cfg.generate.output_path``, return counts and speed. Tests call this directly.
    The output file is locked while this runs (a second generate into it is refused); see :func:`_generate`."""
    lock = lock_output_file(cfg.generate.output_path, what="--generate.output_path", log=log)
    try:
        return _generate(cfg, log)
    finally:
        lock.release()


def _generate(cfg: GenerateTaskConfig, log=print) -> Dict[str, Any]:
    """The work of :func:`generate`.

    A prompt row with ``turns`` (a list of user turns, as MT-Bench's question.jsonl) is answered turn
    by turn, each turn with the earlier turns and answers in the chat history; its output row has
    ``turns``, ``responses`` (one per turn), ``finish_reasons`` and, for the last turn, ``response``
    and ``finish_reason``. Such a row is written when all its turns are answered."""
    d, model_path = cfg.data, cfg.model.model_name_or_path

    # Cheap checks first (data, tokenizer, output file), before any model is loaded.
    tokenizer, rows, items, multi = _read_prompts(cfg)
    prompt_ids = [] if multi else render_prompt_ids(items, tokenizer, d, model_path)
    stop_ids = _stop_ids(cfg, tokenizer)
    out = ResultsFile(cfg.generate.output_path)
    finished = _load_finished(cfg, out, items, TURNS_KEY if multi else d.prompt_key, log)
    pending = [k for k, it in enumerate(items) if it.id not in finished]
    cfg = _resolve_backend(cfg, pending, log)
    already_done = sum(1 for it in items if it.id in finished)
    run = _Run(cfg, tokenizer, rows, items, multi, prompt_ids, stop_ids, out, finished, pending, already_done, log)
    _log_plan(run)

    renderer = PromptRenderer.from_data_config(tokenizer, d, model_path=model_path)
    if pending and cfg.generate.backend in ("vllm", "served"):
        needs = longest_prompts(cfg, renderer, rows, items, pending, prompt_ids)
        if cfg.generate.backend == "vllm":
            context_problems(cfg.vllm.max_model_len, needs, log)
        else:  # asked of the server before any prompt is sent
            served = ServedClient(Endpoint.of(cfg.served, "--served.base_url"), log)
            context_problems(
                served.info().get("max_model_len"), needs, log, served=f"--served.base_url {cfg.served.base_url}"
            )
    if pending:
        _answer_pending(run, renderer)

    ours, others = _write_in_prompt_order(run)
    stats = _stats(run, ours, others)
    _log_done(run, stats, others)
    return stats


def _read_prompts(cfg: GenerateTaskConfig) -> Tuple[Any, List[dict], List[PromptItem], bool]:
    """The tokenizer, rows, prompts and multi-turn flag of --data.dataset (one kind of prompt per file)."""
    d, g = cfg.data, cfg.generate
    tokenizer = data_tokenizer(cfg.model.model_name_or_path, d)
    rows = load_rows(d.dataset, split=d.dataset_split, max_samples=d.max_samples, what="--data.dataset")
    items = extract_prompts(rows, d.prompt_key, g.id_key, d.dataset, jsonl_line_numbers(d.dataset))
    multi = [it for it in items if it.multi_turn]
    if multi and len(multi) != len(items):
        raise DataError(
            f"--data.dataset {d.dataset}: {len(multi)} rows are multi-turn ({TURNS_KEY!r}) and "
            f"{len(items) - len(multi)} are not; use one kind per file"
        )
    if multi and not d.apply_chat_template:
        raise DataError(
            f"--data.dataset {d.dataset}: multi-turn prompts ({TURNS_KEY!r}) need "
            "--data.apply_chat_template (the answers go into the chat history)"
        )
    return tokenizer, rows, items, bool(multi)


def _stop_ids(cfg: GenerateTaskConfig, tokenizer) -> List[int]:
    """The token ids that end an answer (:func:`~openrlhf.generation.prompts.stop_token_ids`)."""
    d = cfg.data
    return stop_token_ids(
        tokenizer,
        use_chat_template=d.apply_chat_template,
        chat_template=d.tokenizer_chat_template,
        generation_eos=generation_config_eos(cfg.model.model_name_or_path),
    )


def _load_finished(cfg: GenerateTaskConfig, out: ResultsFile, items, prompt_key: str, log) -> Dict[Any, dict]:
    """The output file's answered rows by id; a DataError when one answers one of these ids for another prompt."""
    g = cfg.generate
    finished = out.load_finished(cfg.model.model_name_or_path)
    if out.torn_line_dropped:
        log(f"generate: dropped a torn last line of {g.output_path} (a killed run's unfinished write)")
    clash = [
        f"id {it.id!r} ({it.where})"
        for it in items
        if it.id in finished and finished[it.id].get(prompt_key) != it.prompt
    ]
    if clash:
        raise DataError(
            f"--generate.output_path {g.output_path} already answers {len(clash)} of these ids with another prompt "
            f"(another prompt file, or ids by position?): {'; '.join(clash[:5])}; give another output path"
        )
    return finished


def _resolve_backend(cfg: GenerateTaskConfig, pending: List[int], log) -> GenerateTaskConfig:
    """``cfg`` with ``--generate.backend auto`` resolved (and said) when there is something to generate."""
    g = cfg.generate
    backend = resolve_backend(g.backend, cfg.vllm.num_engines, g.ray, log) if pending else g.backend
    if backend != g.backend:
        cfg = dataclasses.replace(cfg, generate=dataclasses.replace(g, backend=backend))
    return cfg


def _log_plan(run: _Run) -> None:
    """Log one line: the prompts, how many are already answered, how many to generate, and how."""
    g = run.cfg.generate
    run.log(
        f"generate: {len(run.items)} {'multi-turn ' if run.multi else ''}prompts, {run.already_done} already in "
        f"{g.output_path}, {len(run.pending)} to generate (backend {g.backend}, "
        f"{'greedy' if g.temperature == 0 else f'sampling T={g.temperature}'}, max_new_tokens {g.max_new_tokens}, "
        f"stop ids {run.stop_ids})"
    )


def _answer_pending(run: _Run, renderer: PromptRenderer) -> None:
    """Answer the pending prompts with one generator (every setting and turn); an interrupt says what is done."""
    log_settings(run.cfg, run.rows, run.items, run.pending, run.log)
    gen = _backend(run.cfg, run.tokenizer, run.stop_ids, run.log)  # once for every setting (and turn)
    start = time.perf_counter()
    try:
        if run.multi:
            _answer_turns(run, gen, renderer, start)
        else:
            _answer_prompts(run, gen, start)
    except KeyboardInterrupt:
        raise _interrupted(run) from None
    finally:
        gen.close()


def _answer_turns(run: _Run, gen, renderer: PromptRenderer, start: float) -> None:
    """Answer multi-turn prompts turn by turn; append each row once all its turns are answered."""
    answers: Dict[int, List[tuple]] = {k: [] for k in run.pending}
    for turn in range(max(len(run.items[k].prompt) for k in run.pending)):
        todo = [k for k in run.pending if len(run.items[k].prompt) > turn]
        _answer_turn(run, gen, renderer, turn, todo, answers, start)
    _append(run, [_turns_row(run, run.items[k], answers[k]) for k in run.pending])
    run.elapsed = time.perf_counter() - start


def _answer_turn(run: _Run, gen, renderer: PromptRenderer, turn: int, todo: List[int], answers, start: float) -> None:
    """Answer turn ``turn`` of the prompts at ``todo`` (earlier turns in the history), adding to ``answers``."""
    cfg, items = run.cfg, run.items
    sampling = prompt_sampling(cfg, run.rows, items, todo, turn)
    texts = [
        renderer.render_prompt(turn_messages(items[k].prompt, [a for a, _, _ in answers[k]]), items[k].where)
        for k in todo
    ]
    turn_ids = renderer.prompt_text_ids(texts)
    if cfg.generate.backend in ("vllm", "served"):  # an answer may re-encode longer than it was generated
        served = cfg.generate.backend == "served"
        context_problems(
            gen.max_model_len() if served else cfg.vllm.max_model_len,
            [
                (f"{items[k].where}, turn {turn + 1}", len(ids), sm.max_new_tokens)
                for k, ids, sm in zip(todo, turn_ids, sampling, strict=True)
            ],
            log=lambda _: None,
            served=f"--served.base_url {cfg.served.base_url}" if served else "",
        )
    bar = tqdm(
        total=len(todo), desc=f"generate {cfg.generate.backend} turn {turn + 1}", unit="prompt", dynamic_ncols=True
    )
    for results in gen.run(turn_ids, sampling):
        for pos, token_ids, backend_finish in results:
            text, finish, n_tok = _decode(run, token_ids, backend_finish)
            answers[todo[pos]].append((text, finish, n_tok))
            run.new_tokens += n_tok
        bar.update(len(results))
        bar.set_postfix(tok_s=f"{run.new_tokens / max(time.perf_counter() - start, 1e-9):.1f}")
    bar.close()


def _turns_row(run: _Run, it: PromptItem, done: List[tuple]) -> Dict[str, Any]:
    """The output row of a multi-turn prompt from its (text, finish reason, tokens) answers, one per turn."""
    return {
        ID_KEY: it.id,
        TURNS_KEY: it.prompt,
        "responses": [a for a, _, _ in done],
        "finish_reasons": [f for _, f, _ in done],
        "response": done[-1][0],
        "finish_reason": done[-1][1],
        "model": run.cfg.model.model_name_or_path,
        "response_tokens": sum(n for _, _, n in done),
    }


def _answer_prompts(run: _Run, gen, start: float) -> None:
    """Answer single-turn prompts, appending each batch's rows to the output file as it comes."""
    g, items, pending = run.cfg.generate, run.items, run.pending
    bar = tqdm(total=len(pending), desc=f"generate {g.backend}", unit="prompt", dynamic_ncols=True)
    try:
        sampling = prompt_sampling(run.cfg, run.rows, items, pending)
        for results in gen.run([run.prompt_ids[k] for k in pending], sampling):
            rows_out = []
            for pos, token_ids, backend_finish in results:
                it = items[pending[pos]]
                text, finish, n_tok = _decode(run, token_ids, backend_finish)
                rows_out.append(
                    {
                        ID_KEY: it.id,
                        run.cfg.data.prompt_key: it.prompt,
                        "response": text,
                        "model": run.cfg.model.model_name_or_path,
                        "finish_reason": finish,
                        "response_tokens": n_tok,
                    }
                )
                run.new_tokens += n_tok
            _append(run, rows_out)
            run.elapsed = time.perf_counter() - start
            bar.update(len(rows_out))
            bar.set_postfix(tok_s=f"{run.new_tokens / max(run.elapsed, 1e-9):.1f}")
    finally:
        bar.close()


def _decode(run: _Run, token_ids, backend_finish) -> Tuple[str, str, int]:
    """(text, finish reason, token count) of one generated answer, cut at its first stop token."""
    content, n_tok, finish = trim_response(token_ids, run.stop_ids, backend_finish)
    return run.tokenizer.decode(content, skip_special_tokens=True), finish, n_tok


def _append(run: _Run, rows_out: List[dict]) -> None:
    """Append answered rows to the output file and count them as finished."""
    run.out.append(rows_out)
    for r in rows_out:
        run.finished[r[ID_KEY]] = r


def _interrupted(run: _Run) -> Interrupted:
    """The error of an interrupted run: how many prompts the output file answers, and how to resume."""
    finished = run.finished
    try:  # the file is the truth (the interrupt may fall between a write and the bookkeeping)
        finished = run.out.load_finished(run.cfg.model.model_name_or_path)
    except Exception:  # noqa: BLE001 - the count is only informative
        pass
    done = sum(1 for it in run.items if it.id in finished)
    unit = "multi-turn prompts (a row is written when all its turns are answered)" if run.multi else "prompts"
    return Interrupted(
        f"{done} of {len(run.items)} {unit} are answered in {run.cfg.generate.output_path}; rerun the same "
        "command to resume (only the missing ones are generated)"
    )


def _write_in_prompt_order(run: _Run) -> Tuple[List[dict], List[dict]]:
    """(our rows, other ids' rows); the file rewritten in prompt-file order if needed (missing: an error)."""
    items, finished = run.items, run.finished
    missing = [it.id for it in items if it.id not in finished]
    if missing:
        raise RuntimeError(
            f"generate: the {run.cfg.generate.backend} backend returned no response for ids {missing[:10]}"
        )
    ours = [finished[it.id] for it in items]
    ids = {it.id for it in items}
    others = [r for rid, r in finished.items() if rid not in ids]
    current = list(finished.values())
    wanted = ours + others
    if [r[ID_KEY] for r in current] != [r[ID_KEY] for r in wanted]:
        run.out.rewrite(wanted)
    return ours, others


def _stats(run: _Run, ours: List[dict], others: List[dict]) -> Dict[str, Any]:
    """The counts and speed of the run (what :func:`generate` returns)."""
    g = run.cfg.generate
    finish = Counter(r.get("finish_reason", "unknown") for r in ours)
    return {
        "output_path": g.output_path,
        "model": run.cfg.model.model_name_or_path,
        "backend": g.backend,
        "prompts": len(run.items),
        "already_done": run.already_done,
        "generated": len(run.pending),
        "rows_in_output": len(ours) + len(others),
        "other_rows_in_output": len(others),
        "finish_stop": finish.get("stop", 0),
        "finish_length": finish.get("length", 0),
        "new_tokens": run.new_tokens,
        "seconds": round(run.elapsed, 3),
        "tokens_per_s": round(run.new_tokens / run.elapsed, 2) if run.elapsed > 0 else 0.0,
        "torn_line_dropped": run.out.torn_line_dropped,
    }


def _log_done(run: _Run, stats: Dict[str, Any], others: List[dict]) -> None:
    """Log the closing line (counts, speed) and a note on rows of ids that are not in the prompt file."""
    g = run.cfg.generate
    run.log(
        f"generate: done; {stats['generated']} generated, {stats['already_done']} were already done, "
        f"{stats['finish_length']} of {stats['prompts']} hit max_new_tokens; "
        f"{run.new_tokens} tokens at {stats['tokens_per_s']} tokens/s -> {g.output_path}"
    )
    if others:
        run.log(
            f"generate: note: {len(others)} rows of {g.output_path} have ids that are not in {run.cfg.data.dataset}"
        )
