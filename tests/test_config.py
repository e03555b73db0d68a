"""Config validation: schema defaults, strict values, strict files, and one clear line naming key and file."""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from lossablation.config import load_config, load_schema, training_device
from lossablation.errors import LossAblationError, safe_text

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


def _refusal(config, **kwargs) -> str:
    """The one-line message load_config refuses ``config`` with."""
    with pytest.raises(LossAblationError) as info:
        load_config(config, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.isprintable(), message
    return message


# ---------------------------------------------------------------------------------------------- defaults
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


def _schema_defaults(schema: dict, prefix: tuple = ()):
    """(key path, default) of every key with a default, nested sections included."""
    for name, sub in schema.get("properties", {}).items():
        if "default" in sub:
            yield prefix + (name,), sub["default"]
            yield from _schema_defaults(sub, prefix + (name,))


def test_every_schema_default_is_present_when_its_section_is_absent(minimal):
    cfg = load_config(minimal)
    defaults = list(_schema_defaults(load_schema()))
    assert len(defaults) > 40 and ("stage1", "seed") in dict(defaults) and ("resources", "stage1_cpus") in dict(defaults)
    for path, default in defaults:
        node = cfg
        for key in path:
            assert key in node, f"{'.'.join(path)} missing after load_config"
            node = node[key]
        if not isinstance(default, dict):
            assert node == default, ".".join(path)
    for spec in cfg["losses"].values():
        assert spec["weighting"] == "class_balanced" and isinstance(spec["params"], dict)


def test_a_partly_written_section_gets_the_rest_of_its_defaults(minimal):
    cfg = load_config({**minimal, "train": {"batch_size": 64}, "resources": {"train_cpus": 3}})
    assert cfg["train"]["batch_size"] == 64 and cfg["train"]["max_epochs"] == 50 and cfg["train"]["bf16"] is False
    assert cfg["resources"] == {**cfg["resources"], "train_cpus": 3, "stage1_cpus": 4, "runs_per_gpu": 1}


def test_shipped_configs_are_valid():
    for name in ("config.yaml", "protocol.yaml"):
        cfg = load_config(REPO / "config" / name, check_paths=False)
        assert cfg["baseline"] in cfg["losses"]
    protocol = load_config(REPO / "config" / "protocol.yaml", check_paths=False)
    assert protocol["train"]["max_epochs"] == 50 and protocol["train"]["patience"] == 15
    assert protocol["train"]["batch_size"] == 128 and protocol["train"]["weight_decay"] == 0.01
    assert len(protocol["seeds"]) == 10 and len(protocol["losses"]) == 5


def test_default_config_round_trips_through_yaml(minimal):
    cfg = load_config(minimal)
    assert load_config(yaml.safe_load(yaml.safe_dump(cfg))) == cfg


# ---------------------------------------------------------------------------------------------- bad values
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
    (("losses", "poly", "kind"), "hinge", ["losses.poly.kind", "'hinge'", "cross_entropy, focal, poly1"]),
    (("losses", "poly", "params"), {"gamma": 2.0}, ["losses.poly.params", "unknown parameter 'gamma'"]),
    (("losses", "poly", "params"), {"epsilon": -2.0}, ["losses.poly.params", "'epsilon'", "-2.0"]),
    (("train", "rebalance"), "oversample", ["train.rebalance"]),
    (("device",), "tpu", ["device"]),
    (("dataset",), "/nonexistent/data.npz", ["dataset", "/nonexistent/data.npz"]),
    (("classes", "AB"), ["HORZ_A", "SPLIT"], ["classes:", "SPLIT is in both"]),
    # strict types: an integer is an integer, a boolean is not a number
    (("train", "batch_size"), 128.0, ["train.batch_size: expected integer, got 128.0"]),
    (("train", "batch_size"), True, ["train.batch_size: expected integer, got True"]),
    (("train", "batch_size"), "128", ["train.batch_size: expected integer, got '128'"]),
    (("calibration_bins",), 15.0, ["calibration_bins: expected integer"]),
    (("train", "lr_head"), True, ["train.lr_head: expected number, got True"]),
    (("train", "bf16"), 1, ["train.bf16: expected boolean, got 1"]),
    (("seeds",), [1, True], ["seeds.1: expected integer, got True"]),
    # seeds that fit the RNGs (numpy seeds modulo 2**32)
    (("seeds",), [1, 2**32], ["seeds.1", "4294967296", "maximum"]),
    (("seeds",), [-1], ["seeds.0", "minimum"]),
    (("split", "seed"), 2**64, ["split.seed", "maximum"]),
    (("stage1", "seed"), 2**32, ["stage1.seed"]),
    (("seeds",), list(range(1001)), ["seeds: has 1001 items; at most 1000 allowed"]),
    # sizes that would allocate gigabytes
    (("calibration_bins",), 10**9, ["calibration_bins", "maximum of 1000"]),
    (("train", "batch_size"), 10**7, ["train.batch_size", "maximum"]),
    (("train", "eval_batch_size"), 10**8, ["train.eval_batch_size", "maximum"]),
    (("stage1", "batch_size"), 65537, ["stage1.batch_size", "maximum"]),
    (("train", "max_epochs"), 10**6, ["train.max_epochs", "maximum"]),
    (("stage1", "max_train_blocks"), 10**12, ["stage1.max_train_blocks", "maximum"]),
    (("resources", "train_cpus"), 0, ["resources.train_cpus", "minimum"]),
    (("resources", "stage1_cpus"), 100000, ["resources.stage1_cpus", "maximum"]),
    (("resources", "train_mem_mb"), 10**9, ["resources.train_mem_mb", "maximum"]),
    (("model", "adapter_reduction"), 4096, ["model.adapter_reduction", "maximum"]),
    # anchored patterns and exact enumerations: a trailing newline is not the value
    (("device",), "auto\n", ["device: 'auto\\n' is not auto, cpu, cuda or cuda:N"]),
    (("device",), "cuda:0\n", ["device", "'cuda:0\\n'"]),
    (("device",), "\ncpu", ["device"]),
    (("train", "rebalance"), "none\n", ["train.rebalance: 'none\\n' is not one of"]),
    (("losses", "poly", "kind"), "poly1\n", ["losses.poly.kind", "'poly1\\n'"]),
    (("losses", "poly", "weighting"), "none\n", ["losses.poly.weighting"]),
    (("baseline",), "baseline\n", ["baseline", "is not an arm"]),
    # finite numbers
    (("train", "lr_adapter"), math.nan, ["train.lr_adapter: expected a finite number, got nan"]),
    (("train", "weight_decay"), math.inf, ["train.weight_decay: expected a finite number, got inf"]),
    (("train", "cb_beta"), -math.inf, ["train.cb_beta"]),
    (("model", "head_dropout"), [0.4, math.nan], ["model.head_dropout.1", "finite"]),
    (("losses", "poly", "params"), {"epsilon": math.nan}, ["losses.poly.params", "finite"]),
    # results: a real folder, not the root, not empty
    (("results",), "", ["results: empty"]),
    (("results",), "   ", ["results: empty"]),
    (("results",), "/", ["results", "filesystem root"]),
    (("results",), "/tmp/../..", ["results", "filesystem root"]),
    (("results",), " results", ["results", "blanks"]),
    (("results",), "res\x1b[2Jults", ["results", "\\x1b"]),
    (("results",), 7, ["results: expected string, got 7"]),
    # names: partitions from lossablation.classes, arm names usable as folder names
    (("classes", "RECT"), ["HORZ", "NONE"], ["classes.RECT", "'NONE' is not an AV1 partition"]),
    (("classes", "RECT"), ["HORZ", "HORZ"], ["classes.RECT", "duplicate value 'HORZ'"]),
    (("classes", "AB"), ["horz_a"], ["classes.AB", "'horz_a'"]),
    (("losses", "a b"), {"kind": "focal"}, ["losses: 'a b' is not an arm name"]),
    (("losses", "../up"), {"kind": "focal"}, ["losses: '../up' is not an arm name"]),
    (("losses", 1), {"kind": "focal"}, ["losses: 1 is not an arm name"]),
    (("losses", "poly", "kind"), None, ["losses.poly.kind: expected string, got None"]),
    (("losses", "poly"), {"params": {}}, ["losses.poly: missing required key 'kind'"]),
    # the split: one bound on the sum, in config.py
    (("split", "val_fraction"), 0.8, ["split: val_fraction + test_fraction must stay below 0.9"]),
    (("split", "test_fraction"), 1.0, ["split.test_fraction", "maximum"]),
]


@pytest.mark.parametrize("path,value,fragments", BAD_CONFIGS,
                         ids=[f"{'.'.join(map(str, b[0]))}={b[1]!r}"[:60] for b in BAD_CONFIGS])
def test_bad_config_names_the_key(minimal, path, value, fragments):
    message = _refusal(_mutate(minimal, path, value))
    assert message.startswith("config: ") and "config: config" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("path,value", [
    (("seeds",), [0, 2**32 - 1]),
    (("split", "seed"), 2**32 - 1),
    (("calibration_bins",), 1000),
    (("device",), "cuda:3"),
    (("split", "val_fraction"), 0.6),  # the sum (0.75) is what is bounded
    (("stage1", "max_train_blocks"), None),
    (("losses", "a.b-c_1"), {"kind": "cross_entropy"}),
])
def test_edge_values_are_accepted(minimal, path, value):
    cfg = load_config(_mutate(minimal, path, value))
    node = cfg
    for key in path:
        node = node[key]
    assert node == ({**node, **value} if isinstance(value, dict) else value)


def test_unknown_loss_kind_lists_the_kinds_of_the_loss_module(minimal):
    from lossablation.train.losses import LOSS_FUNCTIONS

    message = _refusal(_mutate(minimal, ("losses", "poly", "kind"), "hinge"))
    assert all(kind in message for kind in LOSS_FUNCTIONS)
    kind_schema = load_schema()["properties"]["losses"]["additionalProperties"]["properties"]["kind"]
    assert "enum" not in kind_schema, "the loss kinds live in lossablation.train.losses only"


def test_schema_names_match_the_package():
    from lossablation.classes import STAGE2_CLASSES
    from lossablation.train.losses import REBALANCE_MODES, WEIGHTINGS

    props = load_schema()["properties"]
    assert tuple(props["classes"]["properties"]) == STAGE2_CLASSES
    assert tuple(props["train"]["properties"]["rebalance"]["enum"]) == tuple(REBALANCE_MODES)
    assert tuple(props["losses"]["additionalProperties"]["properties"]["weighting"]["enum"]) == tuple(WEIGHTINGS)


def test_existing_results_file_is_refused(minimal, tmp_path):
    (tmp_path / "afile").write_text("x")
    message = _refusal({**minimal, "results": str(tmp_path / "afile")})
    assert "results" in message and "not a folder" in message


def test_training_device_resolves_auto_only():
    assert training_device({"device": "cpu"}) == "cpu"
    assert training_device({"device": "cuda:1"}) == "cuda:1"
    assert training_device({"device": "auto"}) in ("cpu", "cuda")


# ---------------------------------------------------------------------------------------------- bad files
def test_config_file_errors(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(LossAblationError, match="missing.yaml: config file not found"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("losses: [unclosed\n")
    with pytest.raises(LossAblationError, match="broken.yaml: not valid YAML"):
        load_config(broken)


ARMS_TWICE = """dataset: data.npz
losses:
  baseline: {kind: focal, params: {gamma: 2.0}}
  poly: {kind: poly1}
  baseline: {kind: cross_entropy}
"""

BAD_FILES = [
    # (file name, bytes, fragments)
    ("twice.yaml", ARMS_TWICE.encode(), ["twice.yaml: not valid YAML (line 5)", "'baseline' written twice",
                                         "first on line 3"]),
    ("top.yaml", b"dataset: a\ndataset: b\nlosses: {x: {kind: focal}}\n", ["line 2", "'dataset' written twice"]),
    ("latin1.yaml", "dataset: caf\xe9\n".encode("latin-1"), ["latin1.yaml: not UTF-8 text (byte 0xe9 at offset 12)"]),
    ("binary.yaml", b"\x00\x01\x02dataset", ["binary.yaml: not a text file"]),
    ("control.yaml", b"dataset: a\x01b\n", ["control.yaml: not valid YAML (line 1)"]),
    ("empty.yaml", b"", ["empty.yaml: expected a mapping of keys at the top level"]),
    ("list.yaml", b"- a\n- b\n", ["list.yaml: expected a mapping"]),
    ("nan.yaml", b"dataset: d\nlosses: {b: {kind: focal}}\nbaseline: b\ntrain: {lr_head: .nan}\n",
     ["nan.yaml: train.lr_head: expected a finite number, got nan"]),
    ("inf.yaml", b"dataset: d\nlosses: {b: {kind: focal, params: {gamma: .inf}}}\nbaseline: b\n",
     ["inf.yaml: losses.b.params", "finite"]),
    ("float.yaml", b"dataset: d\nlosses: {b: {kind: focal}}\nbaseline: b\ntrain: {batch_size: 128.0}\n",
     ["float.yaml: train.batch_size: expected integer, got 128.0"]),
    ("quoted.yaml", b"dataset: d\nlosses: {b: {kind: focal}}\nbaseline: b\ntrain: {batch_size: '128'}\n",
     ["quoted.yaml: train.batch_size: expected integer, got '128'"]),
    ("pickle.yaml", b"dataset: !!python/object/apply:os.system ['true']\n", ["pickle.yaml: not valid YAML (line 1)"]),
    ("escape.yaml", b"dataset: d\nlosses: {b: {kind: focal}}\nbaseline: b\n\"\\e[31mred\": 1\n",
     ["escape.yaml: unknown key '\\x1b[31mred'"]),
    ("bomb.yaml", b"a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                  b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                  b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     ["bomb.yaml: more than 100000 values"]),
    ("loop.yaml", b"dataset: d\nseeds: &s [1, *s]\n", ["loop.yaml: nested deeper than 16 levels"]),
    ("deep.yaml", b"a: " + b"[" * 40 + b"]" * 40 + b"\n", ["deep.yaml: nested deeper than 16 levels"]),
    ("huge.yaml", b"# " + b"x" * (1 << 20) + b"\n", ["huge.yaml: config file larger than 1048576 bytes"]),
]


@pytest.mark.parametrize("name,content,fragments", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_config_file_is_one_line_naming_the_file(tmp_path, name, content, fragments):
    path = tmp_path / name
    path.write_bytes(content)
    message = _refusal(path, check_paths=False)
    assert message.startswith(str(path)) and "\x1b" not in message and len(message) < 400
    for fragment in fragments:
        assert fragment.replace(name, str(path)) in message


def test_a_folder_or_a_device_is_not_a_config_file(tmp_path):
    assert _refusal(tmp_path) == f"{tmp_path}: is a folder, not a config file"
    assert _refusal("/dev/null") == "/dev/null: is not a regular file"


def test_safe_text_escapes_control_characters_once():
    assert safe_text("a\x1b[31mb\nc\u202e") == "a\\x1b[31mb\\nc\\u202e"
    assert safe_text(safe_text("a\x1bb")) == "a\\x1bb"
    assert safe_text("café \\ ok") == "café \\ ok"


# ---------------------------------------------------------------------------------------------- the Snakefile's call
def _snakemake_overrides(*entries: str) -> dict:
    """``--config`` values exactly as Snakemake 9 parses them (nested values come as strings)."""
    from snakemake.cli import parse_config

    return parse_config(list(entries))


def _snakemake_merge(config: dict, overrides: dict) -> dict:
    from snakemake.utils import update_config

    merged = copy.deepcopy(config)
    update_config(merged, overrides)
    return merged


def test_command_line_values_are_coerced_to_the_schema_types(minimal):
    overrides = _snakemake_overrides("seeds=[1,2,3,4]", "train={batch_size: 64, bf16: true, lr_head: 1e-3}",
                                     "device=cuda", "stage1={max_train_blocks: null}", "calibration_bins=20",
                                     "losses={poly: {params: {epsilon: 2}}}")
    assert overrides["seeds"] == ["1", "2", "3", "4"], "Snakemake changed how it parses --config"
    cfg = load_config(_snakemake_merge(minimal, overrides), command_line=overrides)
    assert cfg["seeds"] == [1, 2, 3, 4] and cfg["device"] == "cuda" and cfg["calibration_bins"] == 20
    assert cfg["train"]["batch_size"] == 64 and cfg["train"]["bf16"] is True and cfg["train"]["lr_head"] == 0.001
    assert cfg["train"]["max_epochs"] == 50 and cfg["stage1"]["max_train_blocks"] is None
    assert cfg["losses"]["poly"]["params"] == {"epsilon": 2} and cfg["losses"]["baseline"]["params"] == {"gamma": 2.0}


@pytest.mark.parametrize("entry,fragments", [
    ("seeds=[1,x]", ["--config: seeds.1: expected integer, got 'x'"]),
    ("train={batch_size: 64.0}", ["--config: train.batch_size: expected integer, got '64.0'"]),
    ("train={batch_size: 1_0}", ["--config: train.batch_size: expected integer, got '1_0'"]),
    ("train={bf16: yes}", ["--config: train.bf16: expected boolean, got 'yes'"]),
    ("train={lr_head: nan}", ["--config: train.lr_head: expected number, got 'nan'"]),
    ("train={lr_head: 1e999}", ["--config: train.lr_head: expected a finite number, got inf"]),
    ("seeds=[4294967296]", ["--config: seeds.0", "maximum"]),
    ('train={rebalance: "none\\n"}', ["--config: train.rebalance: 'none\\n' is not one of"]),
    ("device=gpu", ["--config: device: 'gpu' is not auto, cpu, cuda or cuda:N"]),
    ("tarin={batch_size: 1}", ["--config: unknown key 'tarin'"]),
    ("results=/", ["--config: results", "filesystem root"]),
])
def test_bad_command_line_values_name_the_command_line(minimal, entry, fragments):
    overrides = _snakemake_overrides(entry)
    message = _refusal(_snakemake_merge(minimal, overrides), command_line=overrides)
    for fragment in fragments:
        assert fragment in message


def test_values_from_files_are_never_coerced_and_name_their_file(minimal, tmp_path):
    base, extra = tmp_path / "config.yaml", tmp_path / "more.yaml"
    base.write_text(yaml.safe_dump(minimal))
    extra.write_text("train: {batch_size: '128'}\n")
    merged = _snakemake_merge(minimal, {"train": {"batch_size": "128"}})
    overrides = _snakemake_overrides("seeds=[5,6]")
    message = _refusal(_snakemake_merge(merged, overrides), files=[base, extra], command_line=overrides)
    assert message == f"{extra}: train.batch_size: expected integer, got '128'"
    # the culprit in the first of two files, and a default's problem: named by the files it came from
    base.write_text(yaml.safe_dump({**minimal, "calibration_bins": 1}))
    extra.write_text("seeds: [1]\n")
    merged = _snakemake_merge({**minimal, "calibration_bins": 1}, {"seeds": [1]})
    assert _refusal(merged, files=[base, extra]).startswith(f"{base}: calibration_bins:")
    assert _refusal({**merged, "calibration_bins": 15, "baseline": "gone"}, files=[base, extra]).startswith(
        f"{base} + {extra}: baseline: 'gone' is not an arm")


def test_snakefile_mode_rereads_files_strictly(minimal, tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text(ARMS_TWICE)
    message = _refusal(minimal, files=[twice])
    assert message.startswith(f"{twice}: not valid YAML (line 5)") and "'baseline' written twice" in message


def test_the_file_that_set_the_final_value_is_named_whatever_the_order(minimal, tmp_path):
    base, over = tmp_path / "config.yaml", tmp_path / "over.yaml"
    base.write_text(yaml.safe_dump({**minimal, "train": {"batch_size": 128}}))
    over.write_text("train: {batch_size: 128.0}\n")
    merged = _snakemake_merge({**minimal, "train": {"batch_size": 128}}, {"train": {"batch_size": 128.0}})
    for files in ([base, over], [over, base]):  # Snakemake lists its configfile: directive after --configfile
        assert _refusal(merged, files=files).startswith(f"{over}: train.batch_size: expected integer, got 128.0")


SNAKEFILE = """import sys
from lossablation.config import load_config
from lossablation.errors import LossAblationError

configfile: "config.yaml"

try:
    config.update(load_config(config, files=workflow.configfiles, command_line=workflow.config_settings.config,
                              check_paths=False))
except LossAblationError as exc:
    sys.exit(f"lossablation: error: {exc}")
print("SEEDS", config["seeds"], "BATCH", repr(config["train"]["batch_size"]), "BF16", config["train"]["bf16"])

rule all:
    run:
        pass
"""


def _snakemake_n(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args], cwd=folder,
                          capture_output=True, text=True, timeout=300)


def test_the_snakefile_call_with_real_snakemake(tmp_path):
    """The call the Snakefile makes, in a Snakefile of its own: real --config parsing, real merging."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config.yaml")
    ok = _snakemake_n(tmp_path, "--config", "seeds=[1,2,3,4]", "train={batch_size: 64, bf16: true}")
    assert ok.returncode == 0 and "SEEDS [1, 2, 3, 4] BATCH 64 BF16 True" in ok.stdout, ok.stderr
    bad = _snakemake_n(tmp_path, "--config", "seeds=[1,x]")
    assert bad.returncode != 0 and "lossablation: error: --config: seeds.1: expected integer, got 'x'" in bad.stderr
    (tmp_path / "over.yaml").write_text("train: {batch_size: 1}\ntrain: {batch_size: 2}\n")
    twice = _snakemake_n(tmp_path, "--configfile", "over.yaml")
    assert twice.returncode != 0 and "over.yaml: not valid YAML (line 2): key 'train' written twice" in twice.stderr
    (tmp_path / "over.yaml").write_text("train: {batch_size: 128.0}\n")
    float_batch = _snakemake_n(tmp_path, "--configfile", "over.yaml")
    assert "over.yaml: train.batch_size: expected integer, got 128.0" in float_batch.stderr


# ---------------------------------------------------------------------------------------------- the real CLI
TINY = "dataset: DATA\nlosses: {b: {kind: focal}}\nbaseline: b\n"
CLI_CASES = [
    # (file content, fragments of the one line on stderr)
    (ARMS_TWICE, ["'baseline' written twice", "line 5"]),
    (TINY + "train: {batch_size: 128.0}\n", ["train.batch_size", "expected integer"]),
    (TINY + "results: ''\n", ["results"]),
    (TINY + "results: /\n", ["results", "filesystem root"]),
    (TINY + 'device: "auto\\n"\n', ["device", "'auto\\n'"]),
    (TINY + "seeds: [4294967296]\n", ["seeds.0"]),
    (TINY + "calibration_bins: .inf\n", ["calibration_bins", "expected integer, got inf"]),
    (TINY.replace("focal", "hinge"), ["losses.b.kind", "'hinge'"]),
    (TINY + '"\\e]0;pwned\\a": 1\n', ["\\x1b]0;pwned\\x07"]),
]


@pytest.mark.parametrize("content,fragments", CLI_CASES, ids=[f"case{i}" for i in range(len(CLI_CASES))])
def test_check_config_cli_prints_one_line(tmp_path, content, fragments):
    data = tmp_path / "data.npz"
    data.write_bytes(b"x")
    path = tmp_path / "bad.yaml"
    path.write_text(content.replace("DATA", str(data)))
    result = subprocess.run([sys.executable, "-m", "lossablation.cli", "check-config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr and "\x1b" not in result.stderr, result.stderr
    assert str(path) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


def test_check_config_cli_refuses_a_binary_file_and_a_folder(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)))
    for target in (binary, tmp_path):
        result = subprocess.run([sys.executable, "-m", "lossablation.cli", "check-config", str(target)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and str(target) in result.stderr


# ---------------------------------------------------------------------------------------------- packaging
def test_config_readme_documents_every_key():
    readme = (REPO / "config" / "README.md").read_text()
    schema = load_schema()
    for key, spec in schema["properties"].items():
        assert f"`{key}`" in readme, f"config/README.md does not document {key}"
        for sub in spec.get("properties", {}):
            assert f"`{key}.{sub}`" in readme, f"config/README.md does not document {key}.{sub}"


def test_the_schema_is_one_file_inside_the_package():
    assert (REPO / "src" / "lossablation" / "config.schema.yaml").is_file()
    assert not (REPO / "workflow" / "schemas").exists(), "one schema: src/lossablation/config.schema.yaml"


def test_a_wheel_carries_the_schema_and_check_config_runs_from_it(tmp_path):
    """Build a wheel from a copy of the sources and run check-config with the package imported from the wheel."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("lossablation-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "lossablation/config.schema.yaml" in archive.namelist()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "resources" / "demo").mkdir(parents=True)
    (tmp_path / "resources" / "demo" / "av1_demo.npz").write_bytes(b"x")
    env = {**os.environ, "PYTHONPATH": str(wheel)}  # the wheel (zipimport) before the editable checkout
    script = ("import lossablation, sys; assert lossablation.__file__.startswith(sys.argv[1]), lossablation.__file__;"
              "from lossablation.cli import main; sys.exit(main(['check-config', 'config.yaml']))")
    result = subprocess.run([sys.executable, "-c", script, str(wheel)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "config.yaml: ok (5 arms x 3 seeds)" in result.stdout, result.stderr
