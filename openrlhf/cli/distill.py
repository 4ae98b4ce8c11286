"""python -m openrlhf.cli.distill --config examples/configs/demo_cpu.yaml [--run_dir DIR]

Algorithm 1 of the daDPO paper from one YAML file: teacher and student responses, the
preference and SFT sets, dSFT, (cached log-probs,) daDPO, (dDPO,) and an offline report.
Each stage is skipped when its output is complete, so a killed run resumes where it was.
See :mod:`openrlhf.pipeline.plan` for the stages and :mod:`openrlhf.pipeline.distill` for how they run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from openrlhf.cli.common import ArgParser, run_main


def main(argv: Optional[list] = None) -> None:
    ap = ArgParser(prog="python -m openrlhf.cli.distill", description=__doc__.split("\n\n")[1])
    ap.add_argument("--config", required=True, help="the pipeline YAML (see examples/configs/demo_cpu.yaml)")
    ap.add_argument("--run_dir", default="", help="override run_dir of the YAML")
    ap.add_argument(
        "--stop_after",
        default="",
        metavar="STAGE",
        help="stop after this stage (e.g. teacher, prompts, sets, dsft); a rerun without it goes on",
    )
    ap.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher

    def body() -> None:
        args = ap.parse_args(sys.argv[1:] if argv is None else argv)
        # imported after parsing: --help and flag errors come before torch (the CLI's one lazy boundary)
        from openrlhf.pipeline.config import load_distill_config
        from openrlhf.pipeline.plan import plan_distill

        cfg = load_distill_config(args.config)
        if args.run_dir:
            cfg.run_dir = args.run_dir
        plan = plan_distill(cfg)  # every stage's config checked before torch is imported
        from openrlhf.pipeline.distill import Runner

        Runner(plan).run(stop_after=args.stop_after)

    run_main(body)


if __name__ == "__main__":
    main()
