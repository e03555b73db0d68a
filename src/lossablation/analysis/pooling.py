"""Never pool runs of different configurations (issue 12, item 3).

Each Stage-2 run records in ``provenance.hashes`` (``lossablation.train.provenance.run_hashes``) what its numbers
depend on. Before the runs of a sweep are averaged or paired, :func:`check_poolable` compares those hashes with
the config being aggregated (protocol, the arm's loss, split) and with each other (dataset fingerprint, Stage-1
weights: not derivable from the config alone), and refuses with one line naming the runs that differ.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping

from lossablation.errors import LossAblationError

# Hashes the config determines, and what a mismatch means.
FROM_CONFIG = {"protocol": "trained under another protocol (train/model/split/classes/dataset/device keys)",
               "loss": "trained with another loss for their arm", "split": "trained on another split"}
# Hashes every run of a sweep must share.
SHARED = {"dataset_fingerprint": "trained on other data", "stage1_sha256": "trained on other Stage-1 weights"}
MAX_NAMED = 6


def _name(run: Any) -> str:
    return f"{run.arm}/seed{run.seed}"


def _names(runs: list[str]) -> str:
    shown = ", ".join(runs[:MAX_NAMED])
    return shown + (f" and {len(runs) - MAX_NAMED} more" if len(runs) > MAX_NAMED else "")


def _recorded(runs: Iterable[Any]) -> dict[str, Mapping[str, Any] | None]:
    """run name -> its recorded hashes (None when it records none), for the runs that have a metrics.json."""
    return {_name(run): (run.metrics.get("provenance") or {}).get("hashes")
            for run in runs if getattr(run, "metrics", None)}


def check_poolable(runs: Iterable[Any], cfg: Mapping[str, Any]) -> None:
    """Raise LossAblationError (one line naming the runs) unless every run that has metrics was trained under
    ``cfg``'s protocol, its arm's loss and split, and all of them on the same data and Stage-1 weights.

    ``runs``: objects with ``arm``, ``seed`` and ``metrics`` (``lossablation.analysis.runs.Run``). Runs that record
    no hashes (written before runs recorded them) pass only when no run records any: then nothing can be checked.
    """
    from lossablation.train.provenance import run_hashes

    runs = list(runs)
    recorded = _recorded(runs)
    if not any(recorded.values()):
        return
    lacking = [name for name, hashes in recorded.items() if not hashes]
    if lacking:
        raise LossAblationError(f"runs {_names(lacking)}: record no configuration hashes, unlike the other runs "
                                "(trained by an older version?): retrain them before pooling")
    arms = {_name(run): run.arm for run in runs if _name(run) in recorded}
    expected = {arm: run_hashes(cfg, arm, dataset_fingerprint=None, stage1_sha256=None) for arm in set(arms.values())}
    for key, meaning in FROM_CONFIG.items():
        differ = [name for name, hashes in recorded.items() if hashes.get(key) != expected[arms[name]][key]]
        if differ:
            raise LossAblationError(f"runs {_names(differ)}: {key} hash differs from the config's ({meaning}): "
                                    "retrain them or aggregate them with their own config; never pooled")
    for key, meaning in SHARED.items():
        values = Counter(hashes.get(key) for hashes in recorded.values())
        if len(values) > 1:
            common = values.most_common(1)[0][0]
            differ = [name for name, hashes in recorded.items() if hashes.get(key) != common]
            raise LossAblationError(f"runs {_names(differ)}: {key} differs from the other runs' ({meaning}): "
                                    "retrain them; never pooled")
