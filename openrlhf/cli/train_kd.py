"""python -m openrlhf.cli.train_kd --model.model_name_or_path STUDENT --teacher.model_name_or_path TEACHER ...

dSFT+KL: SFT on the teacher's responses plus ``--kd.coef`` x the token-level KL(teacher ||
student) on the response tokens (paper Eq. 2). The teacher must share the student's
vocabulary. Every train_sft flag works. The body is :func:`openrlhf.recipes.kd.train_kd`.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.cli.common import run_cli


def main(argv: Optional[list] = None) -> None:
    def body(cfg):
        # imported after parsing: --help and flag errors come before torch is imported
        from openrlhf.recipes.kd import train_kd

        return train_kd(cfg)

    run_cli(body, "kd", argv)


if __name__ == "__main__":
    main()
