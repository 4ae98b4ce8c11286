"""Two processes (``torchrun --nproc_per_node 2``, gloo) ask offload_host_memory_problem about frozen models
of each of --model_bytes; each writes its answers to --out/rank<r>.json. Launched by
tests/test_offload_memory.py."""

import argparse
import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from openrlhf.utils.deepspeed.offload import offload_host_memory_problem  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model_bytes", type=int, nargs="+", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    problems = [offload_host_memory_problem("--ref.offload", n) for n in args.model_bytes]
    with open(os.path.join(args.out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(problems, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
