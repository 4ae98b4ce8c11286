"""python -m openrlhf.cli.train_sft --model.model_name_or_path ... --data.dataset ...

Supervised fine-tuning on response tokens (dSFT). See docs/training.md for the flags; the body is
:func:`openrlhf.recipes.sft.train_sft`.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.cli.common import run_task


def main(argv: Optional[list] = None) -> None:
    run_task("sft", argv)


if __name__ == "__main__":
    main()
