"""v7 model: parameter counts, checkpoint key layout and strict loading, frozen backbone behaviour."""

import json

import pytest
import torch

from lossablation.commands import model_summary as model_summary_main
from lossablation.errors import LossAblationError
from lossablation.model.networks import (Stage1Model, Stage2Model, build_stage2_model, load_stage1_model,
                                 parameter_summary, stage1_checkpoint_dict)


def save_v7_checkpoint(path, model=None):
    model = model or Stage1Model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.save(stage1_checkpoint_dict(model, opt, None, epoch=3, best_f1=0.79, history=[{"epoch": 1}]), path)
    return model


def test_parameter_counts_match_v7():
    s = parameter_summary(Stage2Model())
    assert s["adapters"] == 166_720
    assert (s["adapter_layer3"], s["adapter_layer4"]) == (33_728, 132_992)
    assert s["head"] == 164_611
    assert s["backbone"] == 11_213_858
    assert s["trainable"] == 331_331
    assert s["total"] == 11_545_189


def test_stage1_state_dict_has_the_documented_v7_layout():
    sd = Stage1Model().state_dict()
    assert len(sd) == 133
    expected_shapes = {
        "backbone.conv1.weight": (64, 1, 7, 7),
        "backbone.bn1.num_batches_tracked": (),
        "backbone.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "backbone.layer4.0.downsample.1.running_var": (512,),
        "backbone.layer4.1.conv2.weight": (512, 512, 3, 3),
        "backbone.se1.excitation.0.weight": (4, 64),
        "backbone.se4.excitation.2.weight": (512, 32),
        "backbone.spatial_attn.conv.weight": (1, 2, 7, 7),
        "head.head.0.weight": (256, 512), "head.head.0.bias": (256,),
        "head.head.3.weight": (2, 256), "head.head.3.bias": (2,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert all(k.startswith(("backbone.", "head.head.")) for k in sd)
    assert not any(".fc." in k or k.endswith(".bias") and ("excitation" in k or "spatial_attn" in k) for k in sd)
    assert sum(k.startswith("backbone.se") for k in sd) == 8


def test_checkpoint_round_trip_and_stage2_backbone(tmp_path):
    path = tmp_path / "stage1_model_best.pt"
    original = save_v7_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"epoch", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "best_f1",
                         "history"}
    loaded = load_stage1_model(path)
    for k, v in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    stage2 = build_stage2_model(path)
    for k, v in original.backbone.state_dict().items():
        assert torch.equal(stage2.backbone.state_dict()[k], v), k
    assert not any(p.requires_grad for p in stage2.backbone.parameters())


def test_key_mismatch_is_a_one_line_error(tmp_path):
    model = Stage1Model()
    sd = model.state_dict()
    sd["backbone.extra.weight"] = sd.pop("backbone.se2.excitation.0.weight")
    path = tmp_path / "bad.pt"
    torch.save({"model_state_dict": sd}, path)
    with pytest.raises(LossAblationError) as err:
        load_stage1_model(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "backbone.se2.excitation.0.weight" in msg and "backbone.extra.weight" in msg
    torch.save({"weights": {}}, path)
    with pytest.raises(LossAblationError, match="model_state_dict"):
        load_stage1_model(path)


def test_stage2_train_mode_keeps_backbone_in_eval():
    model = Stage2Model().train()
    assert model.head.training and model.adapters["layer3"].training
    assert not any(m.training for m in model.backbone.modules())
    x = torch.rand(8, 1, 16, 16)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(x).sum().backward()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model(x).shape == (8, 3)


def test_adapter_names_follow_v7():
    keys = set(Stage2Model().trainable_state_dict())
    for layer in ("layer3", "layer4"):
        for name in ("down_proj.weight", "bn.weight", "bn.running_mean", "dw_conv.weight", "up_proj.weight",
                     "alpha"):
            assert f"adapters.{layer}.{name}" in keys
    assert "head.head.6.weight" in keys


def test_model_summary_command(tmp_path, capsys):
    path = tmp_path / "s1.pt"
    save_v7_checkpoint(path)
    assert model_summary_main(str(path), True, 4) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["trainable"], out["total"], out["adapters"], out["head"]) == (331_331, 11_545_189, 166_720, 164_611)
    assert model_summary_main(None, False, 4) == 0
    assert "331,331" in capsys.readouterr().out
