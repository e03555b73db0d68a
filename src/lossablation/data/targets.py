"""Training targets from AV1 partition ids: Stage 1 (NONE vs partitioned) and Stage 2 (SPLIT / RECT / AB).

Which partitions make up each Stage-2 class is the config's ``classes`` mapping; its default lives in the config
schema only (:func:`default_groups` reads it from there for callers without a config, e.g. ``describe-data``).
torch is imported by the functions that return tensors only (``describe-data`` needs the tables, not torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from lossablation.classes import PARTITION_NAMES, STAGE2_CLASSES
from lossablation.errors import LossAblationError

if TYPE_CHECKING:
    import torch

Groups = Mapping[str, Sequence[str]]


def default_groups() -> dict[str, list[str]]:
    """The schema's default ``classes`` (the v7 grouping), for callers that have no config."""
    from lossablation.config import load_schema

    spec = load_schema()["properties"]["classes"]["properties"]
    return {name: list(spec[name]["default"]) for name in STAGE2_CLASSES}


def group_lookup(groups: Groups | None = None, key: str = "classes") -> np.ndarray:
    """Table partition id -> Stage-2 class index (-1 for NONE and for partitions outside every group).

    ``groups`` None means :func:`default_groups`. The mapping is checked here too, because a table cannot be
    built from a broken one (callers of :func:`stage2_targets` need not come through the config loader).
    """
    groups = default_groups() if groups is None else groups
    if set(groups) != set(STAGE2_CLASSES):
        raise LossAblationError(f"{key}: expected exactly the groups {', '.join(STAGE2_CLASSES)}, "
                                f"got {', '.join(groups) or 'none'}")
    table = np.full(len(PARTITION_NAMES), -1, dtype=np.int64)
    for cls, name in enumerate(STAGE2_CLASSES):
        for member in groups[name]:
            if member not in PARTITION_NAMES:
                raise LossAblationError(f"{key}.{name}: unknown partition {member!r}")
            if member == "NONE":
                raise LossAblationError(f"{key}.{name}: NONE cannot be a Stage-2 class (it is Stage 1's negative)")
            pid = PARTITION_NAMES.index(member)
            if table[pid] != -1:
                raise LossAblationError(f"{key}.{name}: {member} is already in {STAGE2_CLASSES[table[pid]]}")
            table[pid] = cls
    return table


def stage2_targets(partition: torch.Tensor | np.ndarray, groups: Groups | None = None) -> torch.Tensor:
    """Stage-2 class per block (SPLIT 0, RECT 1, AB 2), -1 for NONE (and partitions in no group)."""
    import torch

    table = torch.from_numpy(group_lookup(groups))
    return table[torch.as_tensor(partition, dtype=torch.int64)]


def stage1_targets(partition: torch.Tensor | np.ndarray) -> torch.Tensor:
    """0 for NONE, 1 for any partitioned block."""
    import torch

    return (torch.as_tensor(partition, dtype=torch.int64) != 0).to(torch.int64)


def strata(partition: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Stratum per block for stratified splitting: 0 SPLIT, 1 RECT, 2 AB, 3 NONE / ungrouped."""
    s = table[partition]
    return np.where(s < 0, len(STAGE2_CLASSES), s)


def class_counts(partition: np.ndarray, table: np.ndarray) -> dict:
    """Block counts (JSON-able): ``n``, per ``partition`` name, per ``stage2`` class and ``n_stage2``."""
    pc = np.bincount(partition, minlength=len(PARTITION_NAMES))
    s2 = np.bincount(table[partition][table[partition] >= 0], minlength=len(STAGE2_CLASSES))
    return {"n": int(partition.shape[0]),
            "partition": {name: int(c) for name, c in zip(PARTITION_NAMES, pc)},
            "stage2": {name: int(c) for name, c in zip(STAGE2_CLASSES, s2)},
            "n_stage2": int(s2.sum())}
