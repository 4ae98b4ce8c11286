"""DeepSpeed strategy. Light: names are imported on first use (no deepspeed import here)."""

from openrlhf.utils.lazy import lazy_exports

_EXPORTS = {
    "DeepspeedStrategy": ".strategy",
    "unwrap_model": ".strategy",
    "ResumableDistributedSampler": ".sampler",
    "exit_cleanly": "openrlhf.utils.distributed",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
