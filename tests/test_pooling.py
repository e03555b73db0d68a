"""Never pool runs of different configurations: lossablation.analysis.pooling.check_poolable (issue 12, item 3)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest

from lossablation.analysis.pooling import check_poolable
from lossablation.config import load_config
from lossablation.errors import LossAblationError
from lossablation.train.provenance import run_hashes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return load_config(REPO / "config" / "config.yaml", check_paths=False)


def run(cfg, arm, seed, *, data="d1", stage1="s1", hashes=True):
    recorded = run_hashes(cfg, arm, dataset_fingerprint=data, stage1_sha256=stage1) if hashes else None
    return SimpleNamespace(arm=arm, seed=seed, metrics={"provenance": {"hashes": recorded} if recorded else {}})


def sweep(cfg):
    return [run(cfg, arm, seed) for arm in ("baseline", "poly") for seed in (1, 2, 3)]


def test_runs_of_the_config_pool(cfg):
    check_poolable(sweep(cfg), cfg)
    check_poolable([run(cfg, "poly", 1, hashes=False)], cfg)   # nothing recorded: nothing to check


def test_a_run_of_another_protocol_is_named(cfg):
    other = copy.deepcopy(cfg)
    other["train"]["lr_head"] = 0.0002
    runs = sweep(cfg) + [run(other, "poly", 4)]
    with pytest.raises(LossAblationError, match=r"^runs poly/seed4: protocol hash differs from the config's") as exc:
        check_poolable(runs, cfg)
    assert "\n" not in str(exc.value)


def test_a_changed_loss_names_that_arms_runs(cfg):
    other = copy.deepcopy(cfg)
    other["losses"]["poly"]["params"]["epsilon"] = 2.0
    with pytest.raises(LossAblationError, match=r"^runs poly/seed1, poly/seed2, poly/seed3: loss hash differs"):
        check_poolable(sweep(cfg), other)


def test_a_report_only_key_of_an_arm_changes_no_hash(cfg):
    other = copy.deepcopy(cfg)
    other["losses"]["poly"]["hypothesis"] = {"id": "H2", "predicted_gain_pp": [0.0, 1.0]}
    check_poolable(sweep(cfg), other)


@pytest.mark.parametrize("key, field", [("data", "dataset_fingerprint"), ("stage1", "stage1_sha256")])
def test_runs_on_other_data_or_stage1_weights_are_named(cfg, key, field):
    runs = sweep(cfg) + [run(cfg, "baseline", 4, **{key: "other"})]
    with pytest.raises(LossAblationError, match=rf"^runs baseline/seed4: {field} differs from the other runs'"):
        check_poolable(runs, cfg)


def test_runs_without_hashes_beside_runs_with_them_are_named(cfg):
    runs = sweep(cfg) + [run(cfg, "poly", 4, hashes=False)]
    with pytest.raises(LossAblationError, match=r"^runs poly/seed4: record no configuration hashes"):
        check_poolable(runs, cfg)
