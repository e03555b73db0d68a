"""The frozen-prefix features file (lossablation.train.features): what training reads instead of the dataset.
Round trip equals the in-process features bit for bit; a file that is not ours, or not for this Stage-1
checkpoint, is refused with one line naming it, and never runs code."""

import pytest
import torch
from test_training import write_config, write_inputs
from test_untrusted_files import _Payload

from lossablation.config import load_config
from lossablation.errors import LossAblationError
from lossablation.io import sha256_file
from lossablation.train.features import compute_features, load_features, save_features


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    dataset, ckpt = write_inputs(root, 500, seed=4)
    cfg = load_config(write_config(root, dataset))
    features = compute_features(cfg, ckpt, torch.device("cpu"))
    path = root / "features.pt"
    save_features(path, features)
    return {"root": root, "stage1": ckpt, "features": features, "path": path}


def test_round_trip_is_bit_identical_and_checks_the_stage1_checkpoint(setup):
    again = load_features(setup["path"], stage1_sha256=sha256_file(setup["stage1"]))
    for side, f in setup["features"].sides.items():
        for name in ("h3", "y", "qp"):
            assert torch.equal(getattr(again.sides[side], name), getattr(f, name)), (side, name)
    assert again.split_info == setup["features"].split_info
    assert again.sides["train"].h3.shape[1] == 256 and len(again.sides["val"].y) > 0
    with pytest.raises(LossAblationError, match="features of another Stage-1 checkpoint"):
        load_features(setup["path"], stage1_sha256="0" * 64)


def _payload(setup, **changes) -> dict:
    f = setup["features"]
    sides = {side: {"h3": s.h3.clone(), "y": s.y.clone(), "qp": s.qp.clone()} for side, s in f.sides.items()}
    payload = {"format": "lossablation-stage2-features-1", "stage1_sha256": f.stage1_sha256,
               "split_info": f.split_info, "sides": sides}
    for key, value in changes.items():
        side, _, name = key.partition("__")
        if name:
            payload["sides"][side][name] = value(payload["sides"][side][name])
        else:
            payload[key] = value
    return payload


@pytest.mark.parametrize("change, message", [
    ({"format": "something else"}, "not a Stage-2 features file"),
    ({"val__h3": lambda t: t.double()}, "sides.val: h3: expected a dense torch.float32 tensor"),
    ({"test__h3": lambda t: t.fill_(float("nan"))}, "sides.test: h3: non-finite values"),
    ({"train__y": lambda t: t + 7}, "sides.train: y: targets outside 0..2"),
    ({"train__qp": lambda t: t[:-1]}, "sides.train: shapes"),
    ({"sides": {}}, "sides.train: missing"),
])
def test_files_that_are_not_features_are_refused_with_one_line(setup, tmp_path, change, message):
    path = tmp_path / "features.pt"
    torch.save(_payload(setup, **change), path)
    with pytest.raises(LossAblationError) as info:
        load_features(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_crafted_pickle_is_never_executed(setup, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "features.pt"
    torch.save({**_payload(setup), "split_info": _Payload(marker)}, path)
    control = tmp_path / "control"
    torch.save({"split_info": _Payload(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists(), "the payload must really run code when unpickled without weights_only"
    with pytest.raises(LossAblationError, match="not a Stage-2 features file"):
        load_features(path)
    assert not marker.exists()
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(LossAblationError, match="not a Stage-2 features file"):
        load_features(tmp_path / "text.pt")
    with pytest.raises(LossAblationError, match="features file not found"):
        load_features(tmp_path / "absent.pt")
