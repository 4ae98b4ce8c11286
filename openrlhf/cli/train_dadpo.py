"""python -m openrlhf.cli.train_dadpo --model.model_name_or_path ... --teacher.model_name_or_path ...

daDPO (Eq. 10): DPO plus a frozen teacher of any family, whose sentence-level log-probs
come from its own tokenizer and chat template (online, or cached by ``score_logps``).
Every train_dpo flag works; ``--model.beta`` is the paper's beta1, ``--teacher.beta`` its
beta2. The body is :func:`openrlhf.recipes.dadpo.train_dadpo`.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.cli.common import run_cli


def main(argv: Optional[list] = None) -> None:
    def body(cfg):
        # imported after parsing: --help and flag errors come before torch is imported
        from openrlhf.recipes.dadpo import train_dadpo

        return train_dadpo(cfg)

    run_cli(body, "dadpo", argv)


if __name__ == "__main__":
    main()
