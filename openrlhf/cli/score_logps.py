"""python -m openrlhf.cli.score_logps: cache teacher and/or reference log-probs once.

    python -m openrlhf.cli.score_logps --model.model_name_or_path STUDENT \
        --teacher.model_name_or_path TEACHER [--ref.model_name_or_path REF] \
        --data.dataset pref.jsonl --data.apply_chat_template --ckpt.output_dir scored/

The body (and what it writes) is :func:`openrlhf.recipes.score.score_logps`.
"""

from __future__ import annotations

from typing import Optional

from openrlhf.cli.common import run_cli


def main(argv: Optional[list] = None) -> None:
    def body(cfg):
        # imported after parsing: --help and flag errors come before torch is imported
        from openrlhf.recipes.score import score_logps

        return score_logps(cfg)

    run_cli(body, "score_logps", argv)


if __name__ == "__main__":
    main()
