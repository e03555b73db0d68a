"""``describe-data``: the counts of a dataset (v7 folder or npz) as a JSON-able dict and as a short table."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from lossablation.classes import STAGE2_CLASSES
from lossablation.data.blocks import V7_FILES, load_dataset
from lossablation.data.targets import class_counts, group_lookup


def describe(path: str | os.PathLike, groups: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Counts of a dataset (JSON-able): n_blocks, partition_counts, stage2_counts, n_sources, ...

    ``groups`` is a config's ``classes``; None means the schema's default grouping.
    """
    ds = load_dataset(path)
    table = group_lookup(groups)
    c = class_counts(ds.partition, table)
    out = {
        "path": str(path), "format": ds.provenance["format"], "fingerprint": ds.provenance["fingerprint"],
        "n_blocks": c["n"], "bit_depth": ds.bit_depth, "partition_counts": c["partition"],
        "stage2_counts": c["stage2"], "n_stage2": c["n_stage2"], "n_sources": ds.n_sources,
    }
    if ds.origin is not None:
        present = [name for k, name in enumerate(V7_FILES) if (ds.origin == k).any()]
        out["files"] = {name: class_counts(ds.partition[ds.origin == V7_FILES.index(name)], table)
                        for name in present}
    if ds.source_names is not None:
        out["sources"] = {name: int(n) for name, n in
                          zip(ds.source_names, np.bincount(ds.source, minlength=len(ds.source_names)))}
    if ds.cq is not None:
        out["cq_levels"] = sorted(int(v) for v in np.unique(ds.cq))
    if ds.provenance.get("encoder"):
        out["encoder"] = ds.provenance["encoder"]
    return out


def format_description(d: Mapping[str, Any]) -> str:
    """The short human table of ``describe-data``."""
    depth = "float [0,1]" if d["bit_depth"] is None else f"{d['bit_depth']}-bit"
    sources = "unknown" if d["n_sources"] is None else str(d["n_sources"])
    lines = [f"dataset   {d['path']}  ({d['format']}, {depth})",
             f"blocks    {d['n_blocks']:,}   sources {sources}   fingerprint {d['fingerprint'][:12]}"]
    if d.get("cq_levels"):
        lines.append(f"cq        {', '.join(map(str, d['cq_levels']))}")
    lines.append("")
    lines.append(f"{'partition':<10}{'blocks':>10}{'share':>8}")
    total = max(d["n_blocks"], 1)
    for name, n in d["partition_counts"].items():
        lines.append(f"{name:<10}{n:>10,}{100 * n / total:>7.1f}%")
    lines.append("")
    s2 = max(d["n_stage2"], 1)
    lines.append(f"{'stage 2':<10}{'blocks':>10}{'share':>8}")
    for name, n in d["stage2_counts"].items():
        lines.append(f"{name:<10}{n:>10,}{100 * n / s2:>7.1f}%")
    lines.append(f"{'total':<10}{d['n_stage2']:>10,}")
    if d.get("files"):
        lines.append("")
        lines.append("file       blocks  " + "  ".join(f"{n:>7}" for n in STAGE2_CLASSES))
        for name, c in d["files"].items():
            lines.append(f"{name:<9}{c['n']:>8,}  " + "  ".join(f"{c['stage2'][n]:>7,}" for n in STAGE2_CLASSES))
    return "\n".join(lines)
