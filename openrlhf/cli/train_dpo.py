"""python -m openrlhf.cli.train_dpo --model.model_name_or_path ... --data.dataset ...

DPO / conservative DPO / IPO against a frozen reference (or cached reference log-probs
from ``score_logps``). See docs/training.md for the flags; the body is
:func:`openrlhf.recipes.dpo.train_dpo`.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.cli.common import run_cli


def main(argv: Optional[list] = None) -> None:
    def body(cfg):
        # imported after parsing: --help and flag errors come before torch is imported
        from openrlhf.recipes.dpo import train_dpo

        return train_dpo(cfg)

    run_cli(body, "dpo", argv)


if __name__ == "__main__":
    main()
