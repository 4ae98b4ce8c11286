"""python -m openrlhf.cli.prune --model.model_name_or_path M --data.dataset calib.jsonl \\
       [--data.prompt_key prompt] [--data.apply_chat_template] --prune.mlp_ratio 0.2 --prune.output_dir OUT

Structured pruning (MLP channels, attention key/value groups, whole layers) of a
Llama-family model, guided by calibration prompts; writes a normal HF folder and
``prune_report.json`` (parameters and calibration loss before/after).
"""

from __future__ import annotations

import json
from typing import Optional

from openrlhf.cli.common import run_cli


def main(argv: Optional[list] = None) -> dict:
    def body(cfg) -> dict:
        from openrlhf.tools.prune import prune  # after parsing: --help and flag errors come before torch

        report = prune(cfg)
        keys = (
            "params_before",
            "params_after",
            "params_ratio",
            "loss_before",
            "loss_after",
            "response_loss_before",
            "response_loss_after",
            "dropped_layers",
            "output_dir",
            "seconds",
        )
        print(json.dumps({k: report[k] for k in keys if k in report}, indent=2))
        return report

    return run_cli(body, "prune", argv)


if __name__ == "__main__":
    main()
