"""Files a run reads that someone else may have written: the resume state ``state.pt`` and the Stage-1 checkpoint.

Through the real CLI: a crafted state is never executed and is refused with one line, as is a state of
another run; a damaged state of ours starts the run fresh (tests/test_training.py); a Stage-1 checkpoint with
non-finite weights or values that are not dense tensors is refused with one line naming the file and the key.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faults import fault_env
from test_training import SRC, synthetic_blockset, write_config

from lossablation.data.blocks import save_npz
from lossablation.errors import LossAblationError
from lossablation.model.networks import Stage1Model, stage1_checkpoint_dict
from lossablation.train.state import STATE_FIELDS, STATE_MAGIC, load_state, save_state


class _Payload:
    """Unpickling this runs ``os.system("touch <marker>")``: what a hostile state file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def state_bytes(obj) -> bytes:
    """A file in our state format (header with the payload's true sha256) holding ``obj``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    return STATE_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def plain_state(**identity) -> dict:
    """A state with every field, plain data only."""
    return {**{name: None for name in STATE_FIELDS}, "identity": identity, "epoch": 1}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("untrusted")
    dataset = root / "blocks.npz"
    save_npz(dataset, synthetic_blockset(400))
    torch.manual_seed(0)
    stage1 = root / "stage1_model_best.pt"
    torch.save(stage1_checkpoint_dict(Stage1Model(), epoch=1, best_f1=0.5), stage1)
    return {"root": root, "stage1": stage1, "config": write_config(root, dataset, max_epochs=2)}


def lossablation(*args) -> subprocess.CompletedProcess:
    pythonpath = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "lossablation.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": pythonpath}, timeout=300)


def train(setup: dict, out: Path, stage1: Path | None = None) -> subprocess.CompletedProcess:
    return lossablation("train", "--config", setup["config"], "--arm", "baseline", "--seed", 1,
                        "--stage1", stage1 or setup["stage1"], "--out", out)


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == LossAblationError.exit_code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------- state.pt
def test_crafted_pickle_state_is_never_executed_and_is_refused(setup, tmp_path):
    control = tmp_path / "control_marker"
    torch.load(io.BytesIO(state_bytes({"x": _Payload(control)})[len(STATE_MAGIC) + 65:]), weights_only=False)
    assert control.exists(), "the payload must really run code when unpickled without weights_only"

    marker = tmp_path / "marker"
    out = tmp_path / "run"
    out.mkdir()
    planted = state_bytes({**plain_state(), "model": _Payload(marker)})
    (out / "state.pt").write_bytes(planted)
    proc = train(setup, out)
    one_line_error(proc, str(out / "state.pt"), "not plain tensors and data")
    assert not marker.exists(), "resuming executed code from state.pt"
    assert sorted(p.name for p in out.iterdir()) == ["state.pt"]              # nothing written, nothing replaced
    assert (out / "state.pt").read_bytes() == planted


def test_state_of_another_run_is_refused_not_replaced(setup, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    foreign = state_bytes(plain_state(arm="someone_else", seed=1))
    (out / "state.pt").write_bytes(foreign)
    one_line_error(train(setup, out), str(out / "state.pt"), "another run", "arm differs")
    assert sorted(p.name for p in out.iterdir()) == ["state.pt"] and (out / "state.pt").read_bytes() == foreign


def test_state_of_this_run_under_another_configuration_starts_fresh_with_a_warning(setup, tmp_path):
    """Same run (arm, seed), protocol changed since the state was written: stale, not foreign."""
    reference, out = tmp_path / "reference", tmp_path / "run"
    assert train(setup, reference).returncode == 0
    killed = subprocess.run(  # a real state of this run: killed right after epoch 1's state is written
        [sys.executable, "-m", "lossablation.cli", "train", "--config", str(setup["config"]), "--arm", "baseline",
         "--seed", "1", "--stage1", str(setup["stage1"]), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=fault_env("kill_after_state=1", None, SRC))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = load_state(out / "state.pt", torch.load(io.BytesIO((out / "state.pt").read_bytes().partition(b"\n")[2]),
                                                    weights_only=True)["identity"])
    state["identity"]["config_hash"] = "0" * 64                 # as if train.lr_head had changed since
    (out / "state.pt").write_bytes(state_bytes(state))
    proc = train(setup, out)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" in proc.stderr and "another configuration (config_hash differs)" in proc.stderr, proc.stderr
    assert not (out / "state.pt").exists()
    def losses(folder: Path) -> list[list[str]]:   # every column but the wall-clock seconds
        return [line.split(",")[:-1] for line in (folder / "history.csv").read_text().splitlines()]

    assert losses(out) == losses(reference)         # trained from scratch: the same numbers as a clean run


@pytest.mark.parametrize("content, why", [
    (b"PK\x03\x04 a torch zip without our header", "no lossablation state header"),
    (state_bytes([1, 2, 3]), "not a dict"),
    (state_bytes({"identity": {}}), "field 'epoch' missing"),
])
def test_state_files_that_are_not_ours_are_refused(tmp_path, content, why):
    path = tmp_path / "state.pt"
    path.write_bytes(content)
    with pytest.raises(LossAblationError, match=why) as exc:
        load_state(path, {"arm": "a"})
    assert str(exc.value).startswith(str(path)) and "\n" not in str(exc.value)
    assert path.read_bytes() == content


def test_damaged_state_of_ours_starts_fresh_and_a_good_one_round_trips(tmp_path):
    path = tmp_path / "state.pt"
    identity = {"arm": "a", "seed": 1}
    state = {**plain_state(**identity), "model": {"w": torch.arange(3.0)}, "rng": (torch.get_rng_state(), 5)}
    save_state(path, state)
    loaded = load_state(path, identity)
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0)) and loaded["rng"][1] == 5
    data = path.read_bytes()
    path.write_bytes(data[:-10])                                               # torn: sha256 no longer matches
    assert load_state(path, identity) is None
    assert load_state(tmp_path / "absent.pt", identity) is None


# ------------------------------------------------------------------------------------------- Stage-1 checkpoint
def _broken_checkpoint(path: Path, how: str) -> Path:
    ckpt = stage1_checkpoint_dict(Stage1Model())
    state = ckpt["model_state_dict"]
    if how == "nan":
        state["backbone.layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    elif how == "inf":
        state["head.head.3.bias"][1] = float("inf")
    elif how == "not a tensor":
        state["backbone.bn1.weight"] = 3
    elif how == "sparse":
        state["backbone.bn1.weight"] = state["backbone.bn1.weight"].to_sparse()
    elif how == "meta":
        state["backbone.bn1.weight"] = torch.empty(64, device="meta")
    elif how == "state not a dict":
        ckpt["model_state_dict"] = [1, 2]
    torch.save(ckpt, path)
    return path


CHECKPOINT_CASES = {
    "nan": ["backbone.layer2.0.conv1.weight", "non-finite"],
    "inf": ["head.head.3.bias", "non-finite"],
    "not a tensor": ["backbone.bn1.weight", "expected a tensor, got int"],
    "sparse": ["backbone.bn1.weight", "dense CPU tensor", "sparse"],
    "meta": ["backbone.bn1.weight", "dense CPU tensor", "meta"],
    "state not a dict": ["model_state_dict", "mapping"],
}


@pytest.mark.parametrize("how", list(CHECKPOINT_CASES))
def test_bad_stage1_checkpoint_refused_by_model_summary(tmp_path, how):
    ckpt = _broken_checkpoint(tmp_path / "stage1_model_best.pt", how)
    proc = lossablation("model-summary", "--stage1", ckpt)
    one_line_error(proc, str(ckpt), *CHECKPOINT_CASES[how])
    assert proc.stdout == ""


@pytest.mark.parametrize("how", ["nan", "not a tensor"])
def test_bad_stage1_checkpoint_refused_by_train_before_any_output(setup, tmp_path, how):
    ckpt = _broken_checkpoint(tmp_path / "stage1_model_best.pt", how)
    out = tmp_path / "run"
    one_line_error(train(setup, out, ckpt), str(ckpt), *CHECKPOINT_CASES[how])
    assert not out.exists() or not any(out.iterdir()), "a refused checkpoint must leave the run folder empty"
