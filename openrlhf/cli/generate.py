"""python -m openrlhf.cli.generate --model.model_name_or_path M --data.dataset P --generate.output_path OUT.jsonl

Responses of one model to every prompt of a dataset (steps 1 and 2 of Algorithm 1), with the hf or
vLLM backend; a rerun resumes. The body (prompts, output rows, resuming, sampling, the vLLM context
check) is :func:`openrlhf.recipes.generate.generate`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from openrlhf.cli.common import run_cli


def main(argv: Optional[list] = None) -> Dict[str, Any]:
    def body(cfg):
        # imported after parsing: --help and flag errors come before torch is imported
        from openrlhf.recipes.generate import generate

        return generate(cfg)

    return run_cli(body, "generate", argv)


if __name__ == "__main__":
    main()
