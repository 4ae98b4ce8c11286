"""python -m openrlhf.cli.distill --config examples/configs/demo_cpu.yaml [--run_dir DIR]

Algorithm 1 of the daDPO paper from one YAML file: teacher and student responses, the
preference and SFT sets, dSFT, (cached log-probs,) daDPO, (dDPO,) and an offline report.
Each stage is skipped when its output is complete, so a killed run resumes where it was.
See :mod:`openrlhf.pipeline.distill` for the stages.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional


def main(argv: Optional[list] = None) -> None:
    from openrlhf.config.parse import ConfigError
    from openrlhf.datasets.loading import DataError
    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.distill import Pipeline
    from openrlhf.utils.distributed import exit_cleanly

    ap = argparse.ArgumentParser(prog="python -m openrlhf.cli.distill", description=__doc__.split("\n\n")[1])
    ap.add_argument("--config", required=True, help="the pipeline YAML (see examples/configs/demo_cpu.yaml)")
    ap.add_argument("--run_dir", default="", help="override run_dir of the YAML")
    ap.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_distill_config(args.config)
        if args.run_dir:
            cfg.run_dir = args.run_dir
        Pipeline(cfg).run_all()
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        exit_cleanly(2)
        sys.exit(2)
    exit_cleanly()


if __name__ == "__main__":
    main()
