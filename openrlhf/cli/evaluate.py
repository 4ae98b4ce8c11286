"""python -m openrlhf.cli.evaluate --teacher.model_name_or_path PATH --teacher_responses FILE \\
       --candidate base=FILE --candidate dSFT=FILE [--candidate daDPO=FILE ...] --output_dir DIR

Offline comparison of student responses with the teacher's: ROUGE-L F1 against the
teacher's responses, the teacher's per-token NLL of each model's responses (scored
with the teacher's own chat template) and response lengths. Writes report.json,
report.md, report.png and scores.jsonl into --output_dir.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

from openrlhf.cli.common import ArgParser, run_main
from openrlhf.config.schema import PARAM_DTYPES
from openrlhf.config.validate import parse_named_files


def candidate_files(items: List[str], parser: argparse.ArgumentParser) -> Dict[str, str]:
    """``--candidate LABEL=FILE`` values -> {label: file}; bad or repeated labels are flag errors."""
    out, problems = parse_named_files(items, word="LABEL", example="dSFT=dsft_responses.jsonl")
    if problems:
        parser.error(problems[0])
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = ArgParser(
        prog="python -m openrlhf.cli.evaluate", description="Compare candidate models' responses with the teacher's."
    )
    ap.add_argument(
        "--teacher.model_name_or_path", dest="teacher", required=True, help="the teacher model folder (or hub name)"
    )
    ap.add_argument(
        "--teacher.base_url",
        dest="teacher_base_url",
        default="",
        help="the teacher served there (vLLM's OpenAI-compatible server): its log-probs come from the server, "
        "--teacher.model_name_or_path names its tokenizer",
    )
    ap.add_argument("--teacher.model", dest="teacher_model", default="", help="the served teacher's name")
    ap.add_argument(
        "--teacher.api_key_env", dest="teacher_api_key_env", default="", help="the variable holding its API key"
    )
    ap.add_argument(
        "--teacher.concurrency", dest="teacher_concurrency", type=int, default=8, help="requests in flight at once"
    )
    ap.add_argument("--teacher_responses", required=True, help="the teacher's responses (JSONL from generate)")
    ap.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="LABEL=FILE",
        help="a candidate's responses (repeatable), e.g. --candidate daDPO=dadpo.jsonl",
    )
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--prompts", default="", help="the held-out prompt file: checks that the teacher ids are in it")
    ap.add_argument(
        "--no_chat_template",
        action="store_true",
        help="score plain prompt + response + EOS instead of the teacher's chat template",
    )
    ap.add_argument(
        "--teacher.tokenizer_chat_template",
        dest="teacher_chat_template",
        default="",
        help="a Jinja chat template (or a file holding one) that replaces the teacher tokenizer's",
    )
    ap.add_argument(
        "--train.micro_batch_size",
        dest="batch_size",
        type=int,
        default=8,
        help="sequences per teacher forward (as score_logps)",
    )
    ap.add_argument(
        "--compare_to",
        default="daDPO",
        help="the candidate compared prompt by prompt with every other (wins / ties / losses, paired "
        "tests); default daDPO, when given",
    )
    ap.add_argument(
        "--ds.param_dtype",
        dest="dtype",
        default="fp32",
        choices=list(PARAM_DTYPES),
        help="the teacher's dtype (fp32 on CPU)",
    )
    for old, new in (
        ("--teacher", "--teacher.model_name_or_path"),
        ("--teacher_chat_template", "--teacher.tokenizer_chat_template"),
        ("--batch_size", "--train.micro_batch_size"),
        ("--dtype", "--ds.param_dtype"),
    ):
        ap.renamed(old, new)
    return ap


def main(argv: Optional[list] = None) -> dict:
    def body() -> dict:
        parser = build_parser()
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        candidates = candidate_files(args.candidate, parser)
        if not candidates:
            parser.error("--candidate: give at least one LABEL=FILE")
        if bool(args.teacher_base_url) != bool(args.teacher_model):
            parser.error("--teacher.base_url and --teacher.model name a served teacher together: give both")
        if args.teacher_concurrency < 1:
            parser.error(f"--teacher.concurrency: must be >= 1, got {args.teacher_concurrency}")
        served = None
        if args.teacher_base_url:
            from openrlhf.utils.served import Endpoint

            served = Endpoint(
                args.teacher_base_url,
                args.teacher_model,
                args.teacher_api_key_env,
                args.teacher_concurrency,
                flag="--teacher.base_url",
            )
        # imported after parsing: --help and flag errors come before torch (the CLI's one lazy boundary)
        from openrlhf.eval.offline import evaluate_responses

        template = args.teacher_chat_template
        if template and os.path.isfile(template):
            with open(template, encoding="utf-8") as f:
                template = f.read()
        report = evaluate_responses(
            args.teacher,
            args.teacher_responses,
            candidates,
            args.output_dir,
            apply_chat_template=not args.no_chat_template,
            batch_size=args.batch_size,
            prompts=args.prompts or None,
            chat_template=template,
            dtype=args.dtype,
            compare_to=args.compare_to,
            served=served,
        )
        with open(os.path.join(args.output_dir, "report.md"), encoding="utf-8") as f:
            print(f.read())
        return report

    return run_main(body)


if __name__ == "__main__":
    main()
