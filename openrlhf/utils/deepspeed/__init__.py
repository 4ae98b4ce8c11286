"""DeepSpeed strategy. Light: names are imported on first use (no deepspeed import here)."""

__all__ = ["DeepspeedStrategy", "ResumableDistributedSampler", "exit_cleanly", "unwrap_model"]


def __getattr__(name):
    if name in ("DeepspeedStrategy", "unwrap_model"):
        from openrlhf.utils.deepspeed import strategy

        return getattr(strategy, name)
    if name == "ResumableDistributedSampler":
        from openrlhf.utils.deepspeed.sampler import ResumableDistributedSampler

        return ResumableDistributedSampler
    if name == "exit_cleanly":
        from openrlhf.utils.distributed import exit_cleanly

        return exit_cleanly
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
