"""Each fast-path piece equals the torchvision / nn module it replaces (within 1e-5), gradients included."""

import pytest
import torch
import torch.nn as nn

from lossablation.model.fastpath import (FastPrefix, FastStage2, FrozenBasicBlock, FrozenSE, FrozenSpatialAttention,
                                   adapter_forward_flat, compute_h3, conv_as_matrix)
from lossablation.model.networks import ConvAdapter, Stage2Model

TOL = 1e-5


def randomise_bn(module, seed=0):
    """Non-trivial eval statistics so that BN folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Stage2Model()
    randomise_bn(m)
    with torch.no_grad():  # adapters far from identity so that their path matters
        for a in m.adapters.values():
            for conv in (a.down_proj, a.dw_conv, a.up_proj):
                conv.weight.mul_(100)
    return m.eval()


@pytest.mark.parametrize("k,stride,hw", [(3, 1, 1), (3, 2, 1), (3, 2, 2), (1, 2, 2), (1, 1, 1), (7, 1, 1)])
def test_conv_as_matrix(k, stride, hw):
    conv = nn.Conv2d(6, 5, k, stride=stride, padding=k // 2, bias=False)
    x = torch.randn(4, 6, hw, hw)
    w, rows, cols = conv_as_matrix(conv, hw, hw)
    ref = conv(x).flatten(1)
    assert torch.allclose(x[:, :, rows, cols].flatten(1) @ w.T, ref, atol=TOL)


def test_conv_as_matrix_rejects_larger_outputs():
    with pytest.raises(ValueError):
        conv_as_matrix(nn.Conv2d(2, 2, 3, padding=1), 2, 2)


def test_layer3_first_block_on_2x2(model):
    block = model.backbone.layer3[0]
    x = torch.relu(torch.randn(16, 128, 2, 2))
    with torch.no_grad():
        assert torch.allclose(FrozenBasicBlock(block, (2, 2))(x), block(x).flatten(1), atol=TOL)


@pytest.mark.parametrize("index", [0, 1])
def test_layer4_blocks_on_1x1(model, index):
    block = model.backbone.layer4[index]
    cin = block.conv1.in_channels
    x = torch.relu(torch.randn(16, cin, 1, 1))
    with torch.no_grad():
        assert torch.allclose(FrozenBasicBlock(block, (1, 1))(x.flatten(1)), block(x).flatten(1), atol=TOL)


def test_se_and_attention_on_1x1(model):
    x = torch.randn(16, 512, 1, 1)
    b = model.backbone
    with torch.no_grad():
        assert torch.allclose(FrozenSE(b.se4)(x.flatten(1)), b.se4(x).flatten(1), atol=TOL)
        attn = b.spatial_attn
        attn.conv.weight.normal_()
        assert torch.allclose(FrozenSpatialAttention(attn)(x.flatten(1)), attn(x).flatten(1), atol=TOL)


def test_adapter_train_mode_forward_gradients_and_running_stats():
    torch.manual_seed(1)
    ref = ConvAdapter(64).train()
    with torch.no_grad():
        for conv in (ref.down_proj, ref.dw_conv, ref.up_proj):
            conv.weight.mul_(100)
    fast = ConvAdapter(64).train()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(32, 64)
    out_ref = ref(x[:, :, None, None]).flatten(1)
    out_fast = adapter_forward_flat(fast, x)
    assert torch.allclose(out_fast, out_ref, atol=TOL)
    (out_ref ** 2).sum().backward()
    (out_fast ** 2).sum().backward()
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        assert torch.allclose(p_fast.grad, p_ref.grad, rtol=1e-4, atol=1e-6), name
    for name, buf in ref.named_buffers():
        assert torch.equal(dict(fast.named_buffers())[name], buf), name


def test_prefix_equals_module(model):
    x = torch.rand(64, 1, 16, 16)
    with torch.no_grad():
        ref = model.backbone.forward_to_layer3(x).flatten(1)
        assert torch.allclose(FastPrefix(model.backbone)(x), ref, atol=TOL)
    h3 = compute_h3(model, x, batch_size=20)
    assert h3.shape == (64, 256) and torch.allclose(h3, ref, atol=TOL)


def _pair(model, train_mode, dtype):
    ref = Stage2Model().to(dtype)
    ref.load_state_dict(model.state_dict())
    fast = Stage2Model().to(dtype)
    fast.load_state_dict(model.state_dict())
    return ref.train(train_mode), fast.train(train_mode)


@pytest.mark.parametrize("train_mode", [False, True])
def test_whole_fast_stage2_forward(model, train_mode):
    x = torch.rand(48, 1, 16, 16)
    ref_model, fast_model = _pair(model, train_mode, torch.float32)
    h3 = compute_h3(fast_model, x)
    torch.manual_seed(5)
    ref = ref_model(x)
    torch.manual_seed(5)   # same dropout masks
    out = FastStage2(fast_model)(h3)
    assert torch.allclose(out, ref, atol=TOL)
    for name, buf in ref_model.named_buffers():   # adapter BN running stats moved identically
        assert torch.allclose(dict(fast_model.named_buffers())[name], buf, atol=TOL), name


@pytest.mark.parametrize("train_mode", [False, True])
def test_whole_fast_stage2_gradients(model, train_mode):
    """In float64: train-mode BN backward cancels terms, so float32 gradients agree only to ~1e-2 relative."""
    x = torch.rand(48, 1, 16, 16, dtype=torch.float64)
    ref_model, fast_model = _pair(model, train_mode, torch.float64)
    h3 = compute_h3(fast_model, x)
    torch.manual_seed(5)
    ref_model(x).square().sum().backward()
    torch.manual_seed(5)
    FastStage2(fast_model)(h3).square().sum().backward()
    ref_params = dict(ref_model.named_parameters())
    for name, p in fast_model.named_parameters():
        if name.startswith("backbone."):
            assert p.grad is None
            continue
        assert torch.allclose(p.grad, ref_params[name].grad, rtol=1e-9, atol=1e-12), name
    # gradients reach adapter3 through the frozen layer4
    assert fast_model.adapters["layer3"].down_proj.weight.grad.abs().sum() > 0
