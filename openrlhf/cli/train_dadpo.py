"""python -m openrlhf.cli.train_dadpo --model.model_name_or_path ... --teacher.model_name_or_path ...

daDPO (Eq. 10): DPO plus a frozen teacher of any family, whose sentence-level log-probs
come from its own tokenizer and chat template (online, or cached by ``score_logps``).
Every train_dpo flag works; ``--model.beta`` is the paper's beta1, ``--teacher.beta`` its beta2.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.config.schema import Config


def train_dadpo(cfg: Config) -> dict:
    """Train and save; returns the last step's metrics. Tests call this directly."""
    from openrlhf.cli.preference import train_preference

    return train_preference(cfg, "dadpo")


def main(argv: Optional[list] = None) -> None:
    from openrlhf.cli.common import run_cli

    run_cli(train_dadpo, "dadpo", argv)


if __name__ == "__main__":
    main()
