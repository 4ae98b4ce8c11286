"""DeepSpeed strategy (strategy.py), its config dicts (ds_config.py, torch-free), checkpoint files (ckpt_io.py)
and the resumable sampler (sampler.py)."""
