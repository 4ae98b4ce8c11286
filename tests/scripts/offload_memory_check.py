"""Two processes (``torchrun --nproc_per_node 2``, gloo) ask offload_host_memory_problem about frozen models
of each of --model_bytes; each writes its answers to --out/rank<r>.json. Launched by
tests/test_offload_memory.py."""

import argparse
import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from openrlhf.utils.deepspeed import offload  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model_bytes", type=int, nargs="+", required=True)
    ap.add_argument("--out", required=True)
    # A fixed meminfo file instead of /proc/meminfo, so the answers do not depend on what else runs.
    ap.add_argument("--meminfo", default="/proc/meminfo")
    args = ap.parse_args()
    real_read = offload.read_meminfo
    offload.read_meminfo = lambda path=args.meminfo: real_read(path)
    dist.init_process_group("gloo")
    problems = [offload.offload_host_memory_problem("--ref.offload", n) for n in args.model_bytes]
    with open(os.path.join(args.out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(problems, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
