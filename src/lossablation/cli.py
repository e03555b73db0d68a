"""The ``lossablation`` console script: one subcommand per workflow step.

Each subcommand imports its module lazily (so ``describe-data`` does not pay for plotting libraries) and
every user error (:class:`LossAblationError`) is printed as one line, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys

from lossablation import __version__
from lossablation.errors import LossAblationError


def _cmd_check_config(args: argparse.Namespace) -> int:
    from lossablation.config import load_config

    cfg = load_config(args.config)
    print(f"{args.config}: ok ({len(cfg['losses'])} arms x {len(cfg['seeds'])} seeds)")
    return 0


def _cmd_describe_data(args: argparse.Namespace) -> int:
    from lossablation.commands_data import describe_data_main

    return describe_data_main(args.path, args.json)


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from lossablation.commands_data import make_dataset_main

    return make_dataset_main(args)


def _cmd_split(args: argparse.Namespace) -> int:
    from lossablation.config import load_config
    from lossablation.data.blocks import write_split_audit

    write_split_audit(load_config(args.config), args.out)
    return 0


def _cmd_model_summary(args: argparse.Namespace) -> int:
    from lossablation.commands_train import model_summary_main

    return model_summary_main(args.stage1, args.json, args.reduction)


def _cmd_train_stage1(args: argparse.Namespace) -> int:
    from lossablation.commands_train import train_stage1_main

    return train_stage1_main(args.config, args.out)


def _cmd_train(args: argparse.Namespace) -> int:
    from lossablation.commands_train import train_main

    return train_main(args.config, args.arm, args.seed, args.stage1, args.out)


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from lossablation.commands_aggregate import aggregate_main

    return aggregate_main(args.config, args.runs, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lossablation", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lossablation {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check-config", help="validate a sweep config (schema + semantics) and exit")
    p.add_argument("config")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("describe-data", help="summarise a v7 folder or an npz dataset")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_describe_data)

    p = sub.add_parser("make-dataset", help="encode images/videos with libaom and write an npz of 16x16 labels")
    from lossablation.commands_data import add_make_dataset_arguments

    add_make_dataset_arguments(p)
    p.set_defaults(func=_cmd_make_dataset)

    p = sub.add_parser("split", help="write the sweep's train/val/test split for audit")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("model-summary", help="parameter counts of the Stage-2 model")
    p.add_argument("--stage1", default=None, help="a v7 Stage-1 checkpoint to load strictly")
    p.add_argument("--reduction", type=int, default=4, help="adapter reduction (gamma)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_model_summary)

    p = sub.add_parser("train-stage1", help="train backbone + binary head (partitioned vs NONE)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_train_stage1)

    p = sub.add_parser("train", help="train one (arm, seed) Stage-2 run")
    p.add_argument("--config", required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--stage1", required=True, help="Stage-1 checkpoint (v7 layout)")
    p.add_argument("--out", required=True, help="run folder")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("aggregate", help="paired statistics, tables, figures and verdicts over all runs")
    p.add_argument("--config", required=True)
    p.add_argument("--runs", required=True, help="folder holding <arm>/seed<seed>/metrics.json")
    p.add_argument("--out", required=True, help="output folder (tables/, figures/, runs.csv)")
    p.set_defaults(func=_cmd_aggregate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LossAblationError as exc:
        print(f"lossablation {args.command}: error: {exc}", file=sys.stderr)
        return LossAblationError.exit_code


if __name__ == "__main__":
    sys.exit(main())
