"""The ``lossablation`` console script: one subcommand per workflow step.

Each subcommand calls one function of :mod:`lossablation.commands` with keyword arguments (the Snakemake jobs
call the same functions). Exit status: 0 on success; 2 for a user error (bad config, dataset, checkpoint,
folder or option), printed as one line ``lossablation COMMAND: error: ...`` without a traceback (argparse's
usage errors also exit 2); 1 for an unexpected failure, with its traceback. Snakemake jobs use the same codes.
"""

from __future__ import annotations

import argparse
import sys

from lossablation import __version__, commands
from lossablation.errors import LossAblationError


def _add_make_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image or video files (.y4m natively; other videos need PyAV), or 'skimage' for "
                             "scikit-image's bundled images")
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--cq", type=int, nargs="+", default=[16, 28, 40, 52], help="aomenc --cq-level values")
    parser.add_argument("--cpu-used", type=int, default=4, help="aomenc --cpu-used (speed preset)")
    parser.add_argument("--cache", default="~/.cache/lossablation/aom",
                        help="folder for the built libaom inspect tool (prepared once)")
    parser.add_argument("--max-frames", type=int, default=None, help="at most this many frames per video")
    parser.add_argument("--variants", nargs="+", default=["orig"],
                        choices=["orig", "flip_lr", "flip_ud", "transpose"],
                        help="image variants encoded as extra frames of the same source")
    parser.add_argument("--jobs", type=int, default=None, help="parallel encodes (default: all CPUs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lossablation", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lossablation {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str, **renamed: str) -> argparse.ArgumentParser:
        """A subparser whose options, renamed by ``renamed`` (option dest -> argument), are ``func``'s arguments."""
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func, renamed=renamed)
        return p

    p = command("check-config", commands.check_config, "validate a sweep config (schema + semantics) and exit")
    p.add_argument("config")

    p = command("describe-data", commands.describe_data, "summarise a v7 folder or an npz dataset", json="as_json")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("make-dataset", commands.make_dataset,
                "encode images/videos with libaom and write an npz of 16x16 labels")
    _add_make_dataset_arguments(p)

    p = command("split", commands.split, "write the sweep's train/val/test split for audit")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="output folder")

    p = command("model-summary", commands.model_summary, "parameter counts of the Stage-2 model", json="as_json")
    p.add_argument("--stage1", default=None, help="a v7 Stage-1 checkpoint to load strictly")
    p.add_argument("--reduction", type=int, default=4, help="adapter reduction (gamma)")
    p.add_argument("--json", action="store_true")

    p = command("train-stage1", commands.train_stage1, "train backbone + binary head (partitioned vs NONE)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="output folder")

    p = command("features", commands.features, "frozen-prefix features (h3) of the split's Stage-2 blocks")
    p.add_argument("--config", required=True)
    p.add_argument("--stage1", required=True, help="Stage-1 checkpoint (v7 layout)")
    p.add_argument("--out", required=True, help="features file (.pt)")

    p = command("train", commands.train, "train one (arm, seed) Stage-2 run, or several seeds as one pack")
    p.add_argument("--config", required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--seed", type=int, nargs="+", required=True, help="one seed, or the seeds of a pack")
    p.add_argument("--stage1", required=True, help="Stage-1 checkpoint (v7 layout)")
    p.add_argument("--out", nargs="+", required=True, help="run folder (one per seed)")
    p.add_argument("--features", default=None, help="features file of `lossablation features` (default: computed)")

    p = command("aggregate", commands.aggregate, "paired statistics, tables, figures and verdicts over all runs")
    p.add_argument("--config", required=True)
    p.add_argument("--runs", required=True, help="folder holding <arm>/seed<seed>/metrics.json")
    p.add_argument("--out", required=True, help="output folder (tables/, figures/, runs.csv)")

    p = command("unlock", commands.unlock,
                "remove a results folder's sweep lock left by a sweep that is gone (a crash, a kill)")
    p.add_argument("--results", required=True, help="the results folder (config key `results`)")
    return parser


def _arguments(args: argparse.Namespace) -> dict:
    """The parsed options as the command's keyword arguments."""
    skip = {"func", "renamed", "command"}
    return {args.renamed.get(key, key): value for key, value in vars(args).items() if key not in skip}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with commands.logging_to_stderr():
            return int(args.func(**_arguments(args)) or 0)
    except LossAblationError as exc:
        print(commands.error_line(f"lossablation {args.command}: error: ", exc), file=sys.stderr)
        return LossAblationError.exit_code


if __name__ == "__main__":
    sys.exit(main())
