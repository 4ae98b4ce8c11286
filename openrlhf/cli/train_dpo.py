"""python -m openrlhf.cli.train_dpo --model.model_name_or_path ... --data.dataset ...

DPO / conservative DPO / IPO against a frozen reference (or cached reference
log-probs from ``score_logps``). See README for the flags.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.config.schema import Config


def train_dpo(cfg: Config) -> dict:
    """Train and save; returns the last step's metrics. Tests call this directly."""
    from openrlhf.cli.preference import train_preference

    return train_preference(cfg, "dpo")


def main(argv: Optional[list] = None) -> None:
    from openrlhf.cli.common import run_cli

    run_cli(train_dpo, "dpo", argv)


if __name__ == "__main__":
    main()
