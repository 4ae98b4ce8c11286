"""python -m openrlhf.cli.train_kto --model.model_name_or_path STUDENT --data.dataset pairs.jsonl ...

dKTO: KTO (Ethayarajh et al. 2024) on preference pairs read as unpaired examples (chosen =
teacher response: desirable; rejected = student response: undesirable), ``--model.beta``,
``--kto.desirable_loss_weight``, ``--kto.undesirable_loss_weight``. The body is
:func:`openrlhf.recipes.kto.train_kto`.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.cli.common import run_cli


def main(argv: Optional[list] = None) -> None:
    def body(cfg):
        # imported after parsing: --help and flag errors come before torch is imported
        from openrlhf.recipes.kto import train_kto

        return train_kto(cfg)

    run_cli(body, "kto", argv)


if __name__ == "__main__":
    main()
