"""DeepSpeed strategy (strategy.py: the object trainers and recipes use) and the modules it hands work to:
process_group.py, comm.py, optim.py, offload.py, ckpt_io.py (resumable checkpoints), export.py (HF / LoRA
folders), wrapping.py; its config dicts (ds_config.py, torch-free) and the resumable sampler (sampler.py)."""
