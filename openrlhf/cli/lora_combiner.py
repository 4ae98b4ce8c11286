"""python -m openrlhf.cli.lora_combiner --model_path BASE --lora_path ADAPTER --output_path OUT
[--is_rm] [--ds.param_dtype bf16]

Merge a LoRA adapter into its base model and save a normal HF folder (weights + the base's tokenizer
and chat template); OpenRLHF's flags. This fork's LoRA runs already write the merged model to
--ckpt.output_dir and the adapter to <output_dir>/adapter; this merges any peft adapter.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

from openrlhf.cli.common import ArgParser, run_main
from openrlhf.config.schema import PARAM_DTYPES


def build_parser():
    ap = ArgParser(prog="python -m openrlhf.cli.lora_combiner", description=__doc__.split("\n\n")[1])
    ap.add_argument("--model_path", required=True, help="the base model (HF folder or hub name)")
    ap.add_argument("--lora_path", required=True, help="the peft adapter folder (adapter_config.json)")
    ap.add_argument("--output_path", required=True, help="the folder to write the merged model to")
    ap.add_argument("--is_rm", action="store_true", help="the base is a sequence-classification (reward) model")
    ap.add_argument(
        "--ds.param_dtype",
        dest="param_dtype",
        default="bf16",
        choices=list(PARAM_DTYPES),
        help="dtype of the merged weights (bf16 as OpenRLHF; fp32 for a CPU)",
    )
    return ap


def main(argv: Optional[list] = None) -> dict:
    def body() -> dict:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        # imported after parsing: --help and flag errors come before torch (the CLI's one lazy boundary)
        from openrlhf.tools.lora_combine import combine_lora

        info = combine_lora(args.model_path, args.lora_path, args.output_path, args.param_dtype, args.is_rm)
        print(json.dumps(info))
        return info

    return run_main(body)


if __name__ == "__main__":
    main()
