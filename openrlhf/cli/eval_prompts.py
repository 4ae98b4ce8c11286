"""python -m openrlhf.cli.eval_prompts --task mtbench|alpacaeval|ifeval --output prompts.jsonl [--max_items N]
       [--temperature T] [--max_new_tokens N]

The prompt file that ``generate`` answers for a benchmark: MT-Bench's 80 two-turn questions (``id`` = question
id, ``category``, ``turns``), AlpacaEval's 805 instructions (``id`` = position, ``prompt``) or IFEval's 541
prompts (``id`` = Google's key, ``prompt``), read from the installed data packages; every row carries the
``temperature`` and ``max_new_tokens`` to answer it with, which ``generate`` applies to that row: FastChat's
for MT-Bench and AlpacaEval (by MT-Bench category: 0.7 writing / roleplay, 0.1 stem / humanities, 0 otherwise;
0.7 for AlpacaEval; 1024 new tokens), greedy with 1280 new tokens for IFEval (lm-evaluation-harness's and
lighteval's setting).
"""

from __future__ import annotations

import sys
from typing import Optional

from openrlhf.cli.common import ArgParser, run_main


def main(argv: Optional[list] = None) -> int:
    def body() -> int:
        ap = ArgParser(prog="python -m openrlhf.cli.eval_prompts", description=__doc__.split("\n\n")[1])
        ap.add_argument("--task", required=True, choices=["mtbench", "alpacaeval", "ifeval"])
        ap.add_argument("--output", required=True, help="the prompt file to write (JSON lines)")
        ap.add_argument("--max_items", type=int, default=-1, help="only the first N (-1: all)")
        ap.add_argument(
            "--temperature",
            type=float,
            default=None,
            help="one sampling temperature for every row (default: FastChat's, by MT-Bench category; IFEval: 0)",
        )
        ap.add_argument(
            "--max_new_tokens",
            type=int,
            default=None,
            help="new tokens per answer (default: FastChat's 1024; IFEval: 1280)",
        )
        a = ap.parse_args(sys.argv[1:] if argv is None else argv)
        # imported after parsing: --help and flag errors come before torch (the CLI's one lazy boundary)
        from openrlhf.eval.run import BENCH_MAX_NEW_TOKENS, write_prompts

        n = write_prompts(a.task, a.output, a.max_items, a.temperature, a.max_new_tokens)
        if a.temperature is not None:
            how = f"temperature {a.temperature}"
        else:
            how = "greedy" if a.task == "ifeval" else "FastChat's temperatures"
        new = a.max_new_tokens if a.max_new_tokens is not None else BENCH_MAX_NEW_TOKENS[a.task]
        print(f"wrote {n} {a.task} prompts to {a.output} ({how}, max_new_tokens {new})")
        return n

    return run_main(body)


if __name__ == "__main__":
    main()
