"""python -m openrlhf.cli.generate --model.model_name_or_path M --data.dataset P --generate.output_path OUT.jsonl

Responses of one model to every prompt of a dataset (steps 1 and 2 of Algorithm 1:
the teacher's and the student's greedy responses). Example::

    python -m openrlhf.cli.generate --model.model_name_or_path ./teacher \\
        --data.dataset prompts/train.jsonl --data.apply_chat_template \\
        --generate.max_new_tokens 512 --generate.batch_size 8 --ds.param_dtype fp32 \\
        --generate.output_path gen/teacher.jsonl

Prompts: ``--data.prompt_key`` (a string or chat messages), else the first human turn
of a ShareGPT ``conversations`` list (see :mod:`openrlhf.generation.prompts`).
Output rows (the id always under ``id``) and resuming: see
:mod:`openrlhf.generation.outputs`. A rerun with the same output path skips the ids
already there (an id already answered for another prompt is an error); when every
prompt is answered the file is rewritten (atomically) in the order of the prompt file.

Sampling (``--generate.temperature`` > 0) is seeded once with ``--train.seed``: an
uninterrupted run is reproducible; a resumed run samples its remaining prompts afresh.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from openrlhf.cli.common import run_task


def main(argv: Optional[list] = None) -> Dict[str, Any]:
    return run_task("generate", argv)


if __name__ == "__main__":
    main()
