"""Exact fast forward of the frozen v7 backbone for 16x16 inputs.

At 16x16 input, layer3 receives 2x2 maps and produces 1x1 maps, and layer4 works on 1x1 maps. A KxK
convolution (padding K//2) whose output is 1x1 only ever multiplies the kernel taps that land inside the
input, so it is a plain matrix product with a slice of its weight: the centre tap on a 1x1 map, the 2x2
lower-right block of taps for a stride-2 3x3 conv on a 2x2 map, tap (0, 0) of input position (0, 0) for a
stride-2 1x1 downsample. BatchNorm in eval mode is an affine map and is folded into the preceding matrix.
Spatial attention's 7x7 conv over a 1x1 map is its centre taps; squeeze-excitation on a 1x1 map is two
matrix products; average pooling of a 1x1 map is a reshape.

In Stage 2 the backbone is frozen and in eval mode, so everything up to layer3 + SE3 (where the first
adapter sits) is a fixed function of the input: ``compute_h3`` evaluates it once per dataset, and each
training step runs only adapter3 -> layer4 -> SE4 -> attention -> adapter4 -> pool -> head on (B, C)
matrices. The frozen weights are constants (no gradient); gradients flow through them to adapter3.
The adapters stay real ``nn.Module`` parameters (v7 names preserved); ``adapter_forward_flat`` applies them
with the centre-tap slice of their own weights, so gradients land in those parameters.

Every function here is checked against the torchvision / nn module it replaces (tests/test_fastpath.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

from lossablation.model.networks import ConvAdapter, ImprovedBackbone, SpatialAttention, SqueezeExcitation, Stage2Model


def conv_as_matrix(conv: nn.Conv2d, in_h: int, in_w: int) -> tuple[torch.Tensor, slice, slice]:
    """(W, rows, cols) with conv(x) == x[:, :, rows, cols].flatten(1) @ W.T for a conv whose output is 1x1.

    Only groups == 1 and dilation 1 are handled (all frozen convs of the v7 backbone).
    """
    if conv.groups != 1 or conv.dilation != (1, 1):
        raise ValueError("conv_as_matrix: only groups=1, dilation=1 convolutions")
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    out_h, out_w = (in_h + 2 * ph - kh) // sh + 1, (in_w + 2 * pw - kw) // sw + 1
    if (out_h, out_w) != (1, 1):
        raise ValueError(f"conv_as_matrix: output is {out_h}x{out_w}, not 1x1")
    # output position 0 reads input index i = k - pad for kernel tap k; keep taps that land inside the input
    r0, r1 = max(0, -ph), min(in_h, kh - ph)
    c0, c1 = max(0, -pw), min(in_w, kw - pw)
    weight = conv.weight.detach()[:, :, r0 + ph:r1 + ph, c0 + pw:c1 + pw]
    return weight.flatten(1).contiguous(), slice(r0, r1), slice(c0, c1)


def fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the matrix before it: bn(x @ W.T) == x @ W'.T + b'."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return (weight * scale[:, None]).contiguous(), (bn.bias.detach() - bn.running_mean * scale).contiguous()


class FrozenConvBN(nn.Module):
    """conv (output 1x1) + eval BN as one affine map on the flattened input taps."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, in_hw: tuple[int, int]) -> None:
        super().__init__()
        weight, self.rows, self.cols = conv_as_matrix(conv, *in_hw)
        w, b = fold_bn(weight, bn)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)
        self.flat_input = in_hw == (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C) for a 1x1 input, else (N, C, H, W); returns (N, out)."""
        if not self.flat_input:
            x = x[:, :, self.rows, self.cols].flatten(1)
        return F.linear(x, self.weight, self.bias)


class FrozenBasicBlock(nn.Module):
    """A torchvision BasicBlock in eval mode whose output is 1x1, as matrix products (output (N, C_out))."""

    def __init__(self, block: BasicBlock, in_hw: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = FrozenConvBN(block.conv1, block.bn1, in_hw)
        self.conv2 = FrozenConvBN(block.conv2, block.bn2, (1, 1))
        self.downsample = None
        if block.downsample is not None:
            self.downsample = FrozenConvBN(block.downsample[0], block.downsample[1], in_hw)
        self.flat_input = in_hw == (1, 1)
        self.merged = self.flat_input and self.downsample is not None
        if self.merged:  # conv1 and downsample read the same (N, C) input: one matmul for both
            self.register_buffer("merged_weight", torch.cat([self.conv1.weight, self.downsample.weight]))
            self.register_buffer("merged_bias", torch.cat([self.conv1.bias, self.downsample.bias]))
            self.split = self.conv1.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            both = F.linear(x, self.merged_weight, self.merged_bias)
            out = self.conv2(F.relu(both[:, :self.split]))
            return F.relu(out + both[:, self.split:])
        out = self.conv2(F.relu(self.conv1(x)))
        if self.downsample is not None:
            identity = self.downsample(x)
        else:
            identity = x if self.flat_input else x.flatten(1)
        return F.relu(out + identity)


class FrozenLayer(nn.Module):
    """A resnet stage (Sequential of BasicBlocks) whose first block outputs 1x1 maps; input (N,C,H,W) or (N,C)."""

    def __init__(self, layer: nn.Sequential, in_hw: tuple[int, int]) -> None:
        super().__init__()
        blocks = [FrozenBasicBlock(layer[0], in_hw)] + [FrozenBasicBlock(b, (1, 1)) for b in layer[1:]]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class FrozenSE(nn.Module):
    """Squeeze-excitation on a 1x1 map: x * sigmoid(W2 relu(W1 x)) on (N, C)."""

    def __init__(self, se: SqueezeExcitation) -> None:
        super().__init__()
        self.register_buffer("w1", se.excitation[0].weight.detach().clone())
        self.register_buffer("w2", se.excitation[2].weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(F.linear(F.relu(F.linear(x, self.w1)), self.w2))


class FrozenSpatialAttention(nn.Module):
    """Spatial attention on a 1x1 map: the 7x7 conv reduces to its centre taps (one weight per input map)."""

    def __init__(self, attn: SpatialAttention) -> None:
        super().__init__()
        k = attn.conv.kernel_size[0] // 2
        self.register_buffer("w", attn.conv.weight.detach()[0, :, k, k].clone())  # (2,) for [mean, max]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = x.mean(dim=1, keepdim=True) * self.w[0] + x.amax(dim=1, keepdim=True) * self.w[1]
        return x * torch.sigmoid(logit)


def adapter_forward_flat(adapter: ConvAdapter, h: torch.Tensor) -> torch.Tensor:
    """ConvAdapter on a 1x1 map given as (N, C), using slices of the adapter's own (trainable) parameters.

    The depthwise 3x3 conv on a 1x1 map is its centre tap (a per-channel scale). The BN module itself is
    called (on an (N, C, 1, 1) view) so training-mode batch statistics and running-stat updates are exactly
    those of the module forward.
    """
    z = F.linear(h, adapter.down_proj.weight[:, :, 0, 0])
    z = F.relu(adapter.bn(z[:, :, None, None]).flatten(1))
    k = adapter.dw_conv.kernel_size[0] // 2
    z = F.relu(z * adapter.dw_conv.weight[:, 0, k, k])
    return h + adapter.alpha * F.linear(z, adapter.up_proj.weight[:, :, 0, 0])


class FastPrefix(nn.Module):
    """conv1 .. layer3 + SE3 of a frozen eval-mode backbone for 16x16 inputs; returns h3 as (N, 256)."""

    def __init__(self, backbone: ImprovedBackbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.layer3 = FrozenLayer(backbone.layer3, (2, 2))
        self.se3 = FrozenSE(backbone.se3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.se2(b.layer2(b.se1(b.layer1(x))))
        return self.se3(self.layer3(x))


class FastStage2(nn.Module):
    """Stage-2 forward from h3 (N, 256): real adapters and head, frozen layer4 / SE4 / attention as matmuls."""

    def __init__(self, model: Stage2Model) -> None:
        super().__init__()
        self.model = model
        self.layer4 = FrozenLayer(model.backbone.layer4, (1, 1))
        self.se4 = FrozenSE(model.backbone.se4)
        self.attn = FrozenSpatialAttention(model.backbone.spatial_attn)

    def forward(self, h3: torch.Tensor) -> torch.Tensor:
        adapters = self.model.adapters
        h = adapter_forward_flat(adapters["layer3"], h3)
        h = self.attn(self.se4(self.layer4(h)))
        h = adapter_forward_flat(adapters["layer4"], h)
        return self.model.head(h)  # average pooling of a 1x1 map is the identity on (N, C)


def compute_h3(model: Stage2Model, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """:func:`prefix_features` of ``model``'s frozen backbone."""
    return prefix_features(model.backbone, x, batch_size)


@torch.no_grad()
def prefix_features(backbone: ImprovedBackbone, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """The frozen prefix output h3 = SE3(layer3(...)) as (N, 256), in batches, on x's device.

    Uses ``no_grad`` (not ``inference_mode``): h3 is later an input of autograd graphs.
    """
    if tuple(x.shape[1:]) != (1, 16, 16):
        raise ValueError(f"compute_h3: expected (N, 1, 16, 16) inputs, got {tuple(x.shape)}")
    backbone.eval()
    prefix = FastPrefix(backbone).to(x.device)
    parts = [prefix(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    if not parts:
        return x.new_zeros((0, 256))
    return torch.cat(parts)
