"""python -m openrlhf.cli.judge --task indomain|mtbench|alpacaeval --candidate NAME=responses.jsonl ... \\
       [--teacher_responses teacher.jsonl] --judge.base_url URL --judge.model NAME --output_dir report/

python -m openrlhf.cli.judge --task ifeval --candidate NAME=responses.jsonl ... --output_dir report/

LLM-as-judge evaluation against any OpenAI-compatible endpoint, and IFEval scored by Google's checker program
without one (see :mod:`openrlhf.eval.run`).
"""

from __future__ import annotations

from typing import Optional

from openrlhf.cli.common import run_cli


def main(argv: Optional[list] = None) -> dict:
    def body(cfg):
        # imported after parsing: --help and flag errors come before torch is imported
        from openrlhf.eval.run import judge

        return judge(cfg)

    return run_cli(body, "judge", argv)


if __name__ == "__main__":
    main()
