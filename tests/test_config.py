"""Config validation: schema defaults, and one clear line naming the key for every config error."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lossablation.config import load_config, load_schema
from lossablation.errors import LossAblationError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def minimal(tmp_path):
    dataset = tmp_path / "data.npz"
    dataset.write_bytes(b"placeholder")  # load_config only checks that the path exists
    return {
        "dataset": str(dataset),
        "losses": {
            "baseline": {"kind": "focal", "params": {"gamma": 2.0}},
            "poly": {"kind": "poly1", "params": {"epsilon": 1.0}},
        },
    }


def test_defaults_are_filled_from_the_schema(minimal):
    cfg = load_config(minimal)
    assert cfg["baseline"] == "baseline"
    assert cfg["seeds"] == [1, 2, 3]
    assert cfg["device"] == "auto"
    assert cfg["train"]["batch_size"] == 128
    assert cfg["train"]["lr_adapter"] == 0.001 and cfg["train"]["lr_head"] == 0.0001
    assert cfg["train"]["rebalance"] == "loss_weights"
    assert cfg["model"]["head_dropout"] == [0.4, 0.4]
    assert cfg["classes"]["RECT"] == ["HORZ", "VERT", "HORZ_4", "VERT_4"]
    assert cfg["losses"]["poly"]["weighting"] == "class_balanced"
    assert cfg["split"]["seed"] == 0
    assert minimal.get("train") is None, "load_config must not modify its input"


def test_shipped_configs_are_valid():
    for name in ("config.yaml", "protocol.yaml"):
        cfg = load_config(REPO / "config" / name, check_paths=False)
        assert cfg["baseline"] in cfg["losses"]
    protocol = load_config(REPO / "config" / "protocol.yaml", check_paths=False)
    assert protocol["train"]["max_epochs"] == 50 and protocol["train"]["patience"] == 15
    assert protocol["train"]["batch_size"] == 128 and protocol["train"]["weight_decay"] == 0.01
    assert len(protocol["seeds"]) == 10 and len(protocol["losses"]) == 5


def _mutate(cfg, path, value):
    cfg = copy.deepcopy(cfg)
    node = cfg
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return cfg


BAD_CONFIGS = [
    # (mutation path, value, fragments the one-line message must contain)
    (("epochs",), 3, ["unknown key 'epochs'"]),
    (("train", "lr_head_typo"), 0.1, ["train", "unknown key 'lr_head_typo'"]),
    (("train", "batch_size"), "big", ["train.batch_size", "expected integer"]),
    (("train", "lr_adapter"), -0.001, ["train.lr_adapter"]),
    (("seeds",), [1, 2, 2], ["seeds", "duplicate value 2"]),
    (("baseline",), "nope", ["baseline", "'nope' is not an arm"]),
    (("losses", "poly", "kind"), "hinge", ["losses.poly.kind", "'hinge' is not one of"]),
    (("losses", "poly", "params"), {"gamma": 2.0}, ["losses.poly.params", "unknown parameter 'gamma'"]),
    (("losses", "poly", "params"), {"epsilon": -2.0}, ["losses.poly.params", "'epsilon'", "-2.0"]),
    (("train", "rebalance"), "oversample", ["train.rebalance"]),
    (("device",), "tpu", ["device"]),
    (("dataset",), "/nonexistent/data.npz", ["dataset", "/nonexistent/data.npz"]),
    (("classes", "AB"), ["HORZ_A", "SPLIT"], ["classes:", "SPLIT is in both"]),
]


@pytest.mark.parametrize("path,value,fragments", BAD_CONFIGS, ids=[".".join(b[0]) for b in BAD_CONFIGS])
def test_bad_config_names_the_key(minimal, path, value, fragments):
    with pytest.raises(LossAblationError) as info:
        load_config(_mutate(minimal, path, value))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_config_file_errors(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(LossAblationError, match="missing.yaml: config file not found"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("losses: [unclosed\n")
    with pytest.raises(LossAblationError, match="broken.yaml: not valid YAML"):
        load_config(broken)


def test_schema_documents_every_key_in_config_readme():
    readme = (REPO / "config" / "README.md").read_text()
    schema = load_schema()
    for key, spec in schema["properties"].items():
        assert f"`{key}`" in readme, f"config/README.md does not document {key}"
        for sub in spec.get("properties", {}):
            assert f"`{key}.{sub}`" in readme, f"config/README.md does not document {key}.{sub}"


def test_default_config_round_trips_through_yaml(minimal):
    cfg = load_config(minimal)
    assert load_config(yaml.safe_load(yaml.safe_dump(cfg))) == cfg
