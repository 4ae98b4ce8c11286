"""python -m openrlhf.cli.train_sft --model.model_name_or_path ... --data.dataset ...

Supervised fine-tuning on response tokens (dSFT). See docs/training.md for the flags; the body is
:func:`openrlhf.recipes.sft.train_sft`.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.cli.common import run_cli


def main(argv: Optional[list] = None) -> None:
    def body(cfg):
        # imported after parsing: --help and flag errors come before torch is imported
        from openrlhf.recipes.sft import train_sft

        return train_sft(cfg)

    run_cli(body, "sft", argv)


if __name__ == "__main__":
    main()
