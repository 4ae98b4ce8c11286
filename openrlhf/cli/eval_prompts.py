"""python -m openrlhf.cli.eval_prompts --task mtbench|alpacaeval --output prompts.jsonl [--max_items N]

The prompt file that ``generate`` answers for a judged benchmark: MT-Bench's 80 two-turn questions
(``id`` = question id, ``turns``) or AlpacaEval's 805 instructions (``id`` = position, ``prompt``),
read from the installed data packages.
"""

from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list] = None) -> int:
    from openrlhf.cli.common import ArgParser, run_main
    from openrlhf.eval.run import write_prompts

    def body() -> int:
        ap = ArgParser(prog="python -m openrlhf.cli.eval_prompts", description=__doc__.split("\n\n")[1])
        ap.add_argument("--task", required=True, choices=["mtbench", "alpacaeval"])
        ap.add_argument("--output", required=True, help="the prompt file to write (JSON lines)")
        ap.add_argument("--max_items", type=int, default=-1, help="only the first N (-1: all)")
        a = ap.parse_args(sys.argv[1:] if argv is None else argv)
        n = write_prompts(a.task, a.output, a.max_items)
        print(f"wrote {n} {a.task} prompts to {a.output}")
        return n

    return run_main(body)


if __name__ == "__main__":
    main()
