"""Loading a tokenizer for training, scoring or generation, and its padding id."""

from __future__ import annotations

import json
import os

from transformers import AutoConfig, AutoTokenizer

from openrlhf.datasets.loading import DataError
from openrlhf.datasets.templates import PromptRenderer

# A folder holds a tokenizer when it has one of these.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def pad_token_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS token.

    Padding positions are masked out everywhere (attention, loss, log-probs), so any
    real id works; EOS is the usual choice and is always a valid embedding row.
    """
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    name = getattr(tokenizer, "name_or_path", "") or "<tokenizer>"
    raise DataError(f"the tokenizer of {name} has neither a pad nor an EOS token; padding needs one of them")


def load_tokenizer(path: str, chat_template: str = "", what: str = "--model.model_name_or_path", use_fast: bool = True):
    """``AutoTokenizer`` of ``path`` with ``chat_template`` (if given) replacing its own and a pad
    token set (EOS when it has none); ``use_fast=False``: the Python tokenizer
    (--data.disable_fast_tokenizer). Errors name the flag ``what``."""
    local = os.path.expanduser(path)
    if os.path.isdir(local) and not any(os.path.exists(os.path.join(local, f)) for f in TOKENIZER_FILES):
        raise DataError(
            f"{what}: {path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer into the model folder (tokenizer.save_pretrained(folder))"
        )
    try:
        tok = AutoTokenizer.from_pretrained(path, use_fast=use_fast)
    except Exception as e:  # transformers raises OSError, ValueError and others for a bad or absent model
        where = (
            "the local folder"
            if os.path.isdir(local)
            else "not a local folder, and not a model in the local Hugging Face cache (offline?) or on the hub"
        )
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{what}: cannot load a tokenizer from {path!r} ({where}): {first}") from None
    if chat_template:
        tok.chat_template = chat_template
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def data_tokenizer(path: str, data, what: str = "--model.model_name_or_path"):
    """:func:`load_tokenizer` as a --data.* section asks (its chat template, fast or not)."""
    return load_tokenizer(
        path, data.tokenizer_chat_template, what=what, use_fast=not getattr(data, "disable_fast_tokenizer", False)
    )


def teacher_renderer(path: str, data, chat_template: str = ""):
    """A teacher's own tokenizer and chat template (another family works), as a
    :class:`~openrlhf.datasets.templates.PromptRenderer` that renders pairs the way ``data``
    (--data.apply_chat_template / --data.input_template) asks; ``chat_template`` replaces the
    tokenizer's (--teacher.tokenizer_chat_template)."""
    tok = load_tokenizer(path, what="--teacher.model_name_or_path")
    return PromptRenderer(
        tok,
        apply_chat_template=data.apply_chat_template,
        input_template=data.input_template,
        chat_template=chat_template,
        model_path=path,
        chat_template_flag="--teacher.tokenizer_chat_template",
    )


def teacher_renderers(teacher, data) -> list:
    """One renderer per --teacher.model_name_or_path (a ``--teacher.*`` section), in order."""
    return [teacher_renderer(path, data, teacher.tokenizer_chat_template) for path in teacher.model_name_or_path]


def shared_vocabulary(
    student_tok, teacher_tok, student_path: str, teacher_path: str, teacher_flag: str = "--teacher.model_name_or_path"
) -> int:
    """The size of the one vocabulary a token-level loss (KD / KL to the teacher) compares
    logits over; a :class:`DataError` naming both vocabularies when the tokenizers differ.

    Both tokenizers must map every token string to the same id. The models' logits may have
    more rows than that (embedding matrices padded to a multiple of 64 / 128); those rows
    are no tokens of the vocabulary and the KL leaves them out."""
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s_vocab != t_vocab:
        detail = _vocab_difference(s_vocab, t_vocab, "the student", "the teacher")
        raise DataError(
            f"{teacher_flag}: a token-level KL needs the student's and the teacher's vocabulary to be the same; "
            f"the student {student_path} has {len(s_vocab)} tokens, the teacher {teacher_path} {len(t_vocab)} "
            f"({detail}). Use train_dadpo for a teacher of another family (sentence-level, own tokenizer)."
        )
    check_embedding_rows(student_tok, teacher_path, teacher_flag)
    return len(s_vocab)


def check_embedding_rows(tok, model_path: str, flag: str) -> None:
    """Refuse a model whose embedding table has fewer rows (its config's ``vocab_size``) than the ids of the
    tokenizer it will be fed (``tok``): an id past the table fails in the forward with an index error. Only
    config.json is read; a config that cannot be read is left to the model's load to explain."""
    try:
        config = AutoConfig.from_pretrained(model_path)
        rows = getattr(config.get_text_config(), "vocab_size", None)
    except Exception:  # no readable config here: the load of the model names the problem
        return
    ids = max(tok.get_vocab().values()) + 1
    if isinstance(rows, int) and ids > rows:
        raise DataError(
            f"{flag}: the model {model_path} has {rows} embedding rows (config vocab_size) but is fed the ids of a "
            f"tokenizer with {ids}: the ids from {rows} on cannot be embedded; give a model whose embedding holds "
            "its tokenizer (resize_token_embeddings and save it)"
        )


def _vocab_difference(a: dict, b: dict, a_name: str, b_name: str) -> str:
    """A few tokens that only one of two vocabularies has, or that they number differently."""
    only_a = sorted(set(a) - set(b))[:3]
    only_b = sorted(set(b) - set(a))[:3]
    moved = sorted(k for k in set(a) & set(b) if a[k] != b[k])[:3]
    return "; ".join(
        part
        for part in (
            f"only {a_name} has {only_a}" if only_a else "",
            f"only {b_name} has {only_b}" if only_b else "",
            f"other ids for {moved}" if moved else "",
        )
        if part
    )


def _backend_definition(tok):
    """A fast tokenizer's whole definition as JSON, padding / truncation settings left out; None for a slow one."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    return spec


def check_reference_tokenizer(
    renderer, pairs, ref_path: str, policy_path: str, flag: str = "--ref.model_name_or_path"
) -> None:
    """Refuse a DPO reference whose tokenizer is not the policy's: the reference is fed the policy's
    token ids, so both tokenizers must have the same vocabulary (every token string with the same id)
    and give the same ids for the text of every pair as the policy renders it (``renderer``: the
    policy's :class:`~openrlhf.datasets.templates.PromptRenderer`; ``pairs``: (where, prompt, response),
    ``where`` naming the row in messages). A :class:`DataError` naming both models otherwise. Only the tokenizer is loaded."""
    if os.path.abspath(os.path.expanduser(ref_path)) == os.path.abspath(os.path.expanduser(policy_path)):
        return
    ref_tok = load_tokenizer(ref_path, what=flag)
    pol_tok = renderer.tokenizer
    fix = (
        "a reference must share the policy's tokenizer (DPO compares their log-probs of the same token "
        "ids); give a reference of the policy's family, or leave the flag empty to use the policy's "
        "initial weights"
    )
    p_vocab, r_vocab = pol_tok.get_vocab(), ref_tok.get_vocab()
    if p_vocab != r_vocab:
        detail = _vocab_difference(p_vocab, r_vocab, "the policy", "the reference")
        raise DataError(
            f"{flag}: the reference {ref_path} has another tokenizer than the policy {policy_path} "
            f"({len(r_vocab)} vs {len(p_vocab)} tokens; {detail}); {fix}"
        )
    check_embedding_rows(pol_tok, ref_path, flag)
    pairs = list(pairs)
    # The same fast-tokenizer definition (vocabulary, merges, normalizer, pre-tokenizer, added tokens) gives
    # the same ids for every text: the rows need not be tokenized twice.
    same_definition = _backend_definition(pol_tok) is not None and _backend_definition(pol_tok) == _backend_definition(
        ref_tok
    )
    texts = [] if same_definition else [renderer.render(p, r, w)[1] for w, p, r in pairs]
    if texts:
        mine = pol_tok(texts, add_special_tokens=False)["input_ids"]
        theirs = ref_tok(texts, add_special_tokens=False)["input_ids"]
        for (w, _, _), a, b in zip(pairs, mine, theirs, strict=True):
            if a != b:
                raise DataError(
                    f"{flag}: the reference {ref_path} has the vocabulary of the policy "
                    f"{policy_path} but tokenizes the text of {w} differently "
                    f"({len(b)} vs {len(a)} tokens); {fix}"
                )
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(pol_tok, name) != getattr(ref_tok, name):
            raise DataError(
                f"{flag}: the reference {ref_path} has another {name[:-3]} ({getattr(ref_tok, name)}) "
                f"than the policy {policy_path} ({getattr(pol_tok, name)}); {fix}"
            )
