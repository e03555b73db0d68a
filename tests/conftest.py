"""Shared fixtures: a tiny REAL dataset cut from the shipped demo, and a tiny sweep config around it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo" / "av1_demo.npz"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/fixtures_runs.py


def cut_demo(out: Path, per_source: int = 120, seed: int = 0) -> Path:
    """Keep at most ``per_source`` blocks per source and partition class, from every source of the demo."""
    from lossablation.data.blocks import load_npz, save_npz

    ds = load_npz(DEMO)
    rng = np.random.default_rng(seed)
    keep = []
    for source in np.unique(ds.source):
        for part in np.unique(ds.partition):
            idx = np.flatnonzero((ds.source == source) & (ds.partition == part))
            keep.append(rng.permutation(idx)[: max(1, per_source // 10)])
    keep = np.sort(np.concatenate(keep))
    fields = {}
    for name in ("blocks", "partition", "source", "qindex", "cq", "frame", "position", "variant"):
        value = getattr(ds, name)
        fields[name] = None if value is None else value[keep]
    tiny = type(ds)(
        bit_depth=ds.bit_depth,
        source_names=ds.source_names,
        variant_names=ds.variant_names,
        provenance=ds.provenance,
        **fields,
    )
    save_npz(out, tiny)
    return out


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    return cut_demo(tmp_path_factory.mktemp("tinydata") / "tiny.npz")


def tiny_sweep_config(dataset: Path, results: Path, arms=("baseline", "poly"), seeds=(1, 2), **train) -> dict:
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return {
        "dataset": str(dataset),
        "results": str(results),
        "device": "cpu",
        "seeds": list(seeds),
        "baseline": arms[0],
        "losses": {arm: base["losses"][arm] for arm in arms},
        "stage1": {"max_epochs": 1, "patience": 1, "batch_size": 256, "max_train_blocks": 1500},
        "train": {"max_epochs": 3, "patience": 2, "batch_size": 64, "scheduler_patience": 1, **train},
        "resources": {"train_runtime_min": 10, "train_mem_mb": 2000, "train_cpus": 1, "stage1_cpus": 1,
                      "stage1_runtime_min": 10, "stage1_mem_mb": 2000},
    }


@pytest.fixture()
def tiny_config(tiny_npz, tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep_config(tiny_npz, tmp_path / "results")))
    return path


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table Snakemake prints before it runs (or dry-runs) a DAG, as {rule: count}, plus "train":
    the number of training jobs (one rule per job, ``train_<arm>_<seeds>``)."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}
    training = sum(n for rule, n in counts.items() if rule.startswith("train_"))
    return {**counts, "train": training} if training else counts
