"""python -m openrlhf.cli.build_sets --teacher_responses gen/teacher.jsonl \\
       --student_responses gen/student.jsonl --output_dir data/sets

Step 3 of Algorithm 1: join the teacher's and the student's responses by id into
preference.jsonl (prompt, chosen = teacher, rejected = student) and sft.jsonl
(input, output = teacher), with report.json counting every dropped row. The drop
policy is documented in :mod:`openrlhf.generation.sets`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Optional

from openrlhf.cli.common import ArgParser, run_main


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    ap = ArgParser(
        prog="python -m openrlhf.cli.build_sets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--teacher_responses", dest="teacher", required=True, help="generation JSONL of the teacher")
    ap.add_argument("--student_responses", dest="student", required=True, help="generation JSONL of the student")
    ap.add_argument("--output_dir", required=True, help="folder for preference.jsonl, sft.jsonl, report.json")
    ap.add_argument(
        "--data.prompt_key", dest="prompt_key", default="prompt", help="key of the prompt in both generation files"
    )
    ap.add_argument(
        "--keep_unfinished",
        action="store_true",
        help="keep teacher responses cut at max_new_tokens (trained without the end-of-turn token) "
        "instead of dropping them",
    )
    for old, new in (
        ("--teacher", "--teacher_responses"),
        ("--student", "--student_responses"),
        ("--prompt_key", "--data.prompt_key"),
    ):
        ap.renamed(old, new)
    return ap.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: Optional[list] = None) -> Dict[str, Any]:
    def body() -> Dict[str, Any]:
        a = parse_args(argv)
        # imported after parsing: --help and flag errors come before torch (the CLI's one lazy boundary)
        from openrlhf.generation.sets import build_sets

        return build_sets(
            a.teacher, a.student, a.output_dir, prompt_key=a.prompt_key, keep_unfinished=a.keep_unfinished
        )

    return run_main(body)


if __name__ == "__main__":
    main()
