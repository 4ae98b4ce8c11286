"""python -m openrlhf.cli.eval_prompts --task mtbench|alpacaeval --output prompts.jsonl [--max_items N]
       [--temperature T] [--max_new_tokens N]

The prompt file that ``generate`` answers for a judged benchmark: MT-Bench's 80 two-turn questions
(``id`` = question id, ``category``, ``turns``) or AlpacaEval's 805 instructions (``id`` = position,
``prompt``), read from the installed data packages; every row carries the ``temperature`` and
``max_new_tokens`` FastChat generates it with (by MT-Bench category: 0.7 writing / roleplay, 0.1 stem /
humanities, 0 otherwise; 0.7 for AlpacaEval; 1024 new tokens), which ``generate`` applies to that row.
"""

from __future__ import annotations

import sys
from typing import Optional

from openrlhf.cli.common import ArgParser, run_main


def main(argv: Optional[list] = None) -> int:
    def body() -> int:
        ap = ArgParser(prog="python -m openrlhf.cli.eval_prompts", description=__doc__.split("\n\n")[1])
        ap.add_argument("--task", required=True, choices=["mtbench", "alpacaeval"])
        ap.add_argument("--output", required=True, help="the prompt file to write (JSON lines)")
        ap.add_argument("--max_items", type=int, default=-1, help="only the first N (-1: all)")
        ap.add_argument(
            "--temperature",
            type=float,
            default=None,
            help="one sampling temperature for every row (default: FastChat's, by MT-Bench category)",
        )
        ap.add_argument("--max_new_tokens", type=int, default=1024, help="new tokens per answer (FastChat: 1024)")
        a = ap.parse_args(sys.argv[1:] if argv is None else argv)
        # imported after parsing: --help and flag errors come before torch (the CLI's one lazy boundary)
        from openrlhf.eval.run import write_prompts

        n = write_prompts(a.task, a.output, a.max_items, a.temperature, a.max_new_tokens)
        how = f"temperature {a.temperature}" if a.temperature is not None else "FastChat's temperatures"
        print(f"wrote {n} {a.task} prompts to {a.output} ({how}, max_new_tokens {a.max_new_tokens})")
        return n

    return run_main(body)


if __name__ == "__main__":
    main()
