"""CLI entry points of the data commands (``describe-data``, ``make-dataset``); ``cli.py`` dispatches here."""

from __future__ import annotations

import argparse
import json
import sys

from lossablation.data.av1 import make_dataset
from lossablation.data.blocks import describe, format_description


def describe_data_main(path: str, as_json: bool) -> int:
    """Print a short table (or one JSON object) describing a v7 folder or an npz dataset."""
    info = describe(path)
    if as_json:
        print(json.dumps(info, sort_keys=False))
    else:
        print(format_description(info))
    return 0


def make_dataset_main(args: argparse.Namespace) -> int:
    """Encode the inputs with aomenc, label 16x16 nodes from libaom's block-size map, write one npz."""
    summary = make_dataset(
        inputs=list(args.inputs), out=args.out, cq_levels=[int(q) for q in args.cq], cpu_used=int(args.cpu_used),
        cache=args.cache, max_frames=getattr(args, "max_frames", None),
        variants=list(getattr(args, "variants", None) or ["orig"]), jobs=getattr(args, "jobs", None),
    )
    counts = ", ".join(f"{name} {n}" for name, n in summary["partition_counts"].items())
    print(f"{summary['out']}: {summary['n_blocks']} blocks, {summary['n_sources']} sources ({counts})",
          file=sys.stderr)
    return 0


def add_make_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The make-dataset arguments (the lead's cli.py may call this on its subparser)."""
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
