"""The one typed config tree shared by every CLI.

Field names follow OpenRLHF >= 0.10.2 dotted flags (``--ds.zero_stage 3``,
``--model.beta 0.1``). Parsing lives in :mod:`openrlhf.config.parse`, checks in
:mod:`openrlhf.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple


@dataclass
class ModelConfig:
    """The trained model (the policy / student)."""

    model_name_or_path: str = ""
    gradient_checkpointing_enable: bool = False
    # DPO / daDPO: beta is the paper's beta1 (weight of the reference log-ratio).
    beta: float = 0.1
    ipo_enable: bool = False
    label_smoothing: float = 0.0
    nll_loss_coef: float = 0.0


@dataclass
class RefConfig:
    """The frozen reference model. Empty path: the policy's initial weights."""

    model_name_or_path: str = ""
    offload: bool = False


@dataclass
class TeacherConfig:
    """The frozen teacher (daDPO only)."""

    model_name_or_path: str = ""
    # The paper's beta2 (weight of the teacher log-ratio).
    beta: float = 0.01
    offload: bool = False
    # A Jinja chat template that replaces the teacher tokenizer's own.
    tokenizer_chat_template: str = ""


@dataclass
class DataConfig:
    dataset: str = ""
    dataset_split: str = "train"
    # -1: every row.
    max_samples: int = -1
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    input_key: str = "input"
    output_key: str = "output"
    apply_chat_template: bool = False
    # A Python format string with one "{}" for the prompt, e.g. "User: {}\nAssistant: ".
    input_template: str = ""
    # A Jinja chat template that replaces the tokenizer's own.
    tokenizer_chat_template: str = ""
    max_len: int = 2048


@dataclass
class EvalConfig:
    dataset: str = ""
    split: str = "test"
    # Evaluate every N optimizer steps; -1: at the end of every epoch only.
    steps: int = -1


@dataclass
class TrainConfig:
    micro_batch_size: int = 1
    # Global batch (rows per optimizer step, all processes together).
    batch_size: int = 128
    max_epochs: int = 1
    seed: int = 42


@dataclass
class AdamConfig:
    lr: float = 5e-7
    betas: Tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0


@dataclass
class DSConfig:
    zero_stage: int = 2
    # bf16 | fp16 | fp32 (fp32 is what CPUs use).
    param_dtype: str = "bf16"
    adam_offload: bool = False
    # sdpa | eager | flash_attention_2
    attn_implementation: str = "sdpa"


@dataclass
class CkptConfig:
    # The final HF model folder and metrics.jsonl.
    output_dir: str = "./ckpt"
    # Save a resumable checkpoint every N optimizer steps; -1: never.
    save_steps: int = -1
    # Folder of resumable checkpoints; empty: <output_dir>/checkpoints.
    path: str = ""
    max_num: int = 3
    load_enable: bool = False
    # Also write an HF folder next to each resumable checkpoint.
    save_hf: bool = False


@dataclass
class WandbConfig:
    project: str = ""
    run_name: str = ""
    org: str = ""


@dataclass
class LoggerConfig:
    logging_steps: int = 1
    tensorboard_dir: str = ""
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class GenerateConfig:
    """Response generation (python -m openrlhf.cli.generate)."""

    # hf (batched transformers generate; CPU or GPU) | vllm (GPU)
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
    # vLLM only.
    tp_size: int = 1
    num_engines: int = 1
    gpu_memory_utilization: float = 0.9


@dataclass
class PruneConfig:
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


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adam: AdamConfig = field(default_factory=AdamConfig)
    ds: DSConfig = field(default_factory=DSConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    # cosine_with_min_lr | cosine | linear | constant | constant_with_warmup
    lr_scheduler: str = "cosine_with_min_lr"
    lr_warmup_ratio: float = 0.03
    max_norm: float = 1.0
    # Set by the deepspeed launcher; -1 otherwise.
    local_rank: int = -1

    @property
    def checkpoint_dir(self) -> str:
        import os

        return self.ckpt.path or os.path.join(self.ckpt.output_dir, "checkpoints")
