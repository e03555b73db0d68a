"""The v7 model: ResNet-18 backbone for 16x16 luma blocks, conv adapters, Stage-1 and Stage-2 heads.

Module and parameter names follow the researcher's v7 code (the checkpoint layout is in docs/design.md) so
that a v7 ``stage1_model_best.pt`` loads strictly and our Stage-2 checkpoints keep the v7 adapter names.
A Stage-1 checkpoint is untrusted input: it is read with ``weights_only=True`` and every value is checked
(a dense CPU tensor of the layout's shape, finite) before it reaches a model, each refusal one line naming
the file and the first bad key.

Shapes for a 16x16 input: conv1 (stride 2) -> 8x8, maxpool -> 4x4, layer1 4x4, layer2 2x2, layer3 1x1,
layer4 1x1. ``lossablation.model.fastpath`` uses that to compute the frozen parts exactly as matrix products.

Head dropout: the plan's "progressive dropout 0.1-0.4" names four values for a head with two dropout layers;
the code behind the 58.53 % baseline uses 0.4 twice. We follow the code (``cfg["model"]["head_dropout"]``,
default ``[0.4, 0.4]``); the list is configurable.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from lossablation.errors import LossAblationError

SE_REDUCTION = 16
STAGE1_HEAD_DROPOUT = 0.3


class SqueezeExcitation(nn.Module):
    """Channel gate: global average -> Linear(C, C/16) -> ReLU -> Linear(C/16, C) -> sigmoid (no biases)."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = channels // reduction
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excitation = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.excitation(self.squeeze(x).flatten(1))
        return x * gate[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM-style spatial gate: 7x7 conv over [channel mean, channel max], sigmoid (no bias)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class ImprovedBackbone(nn.Module):
    """torchvision resnet18 with a 1-channel conv1, SE after each stage, spatial attention after SE4.

    ``forward`` returns the pooled 512-d feature; ``forward_to_layer3`` / ``forward_from_layer3`` split it at
    the point where the first adapter sits (after layer3 + SE3).
    """

    def __init__(self) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18(weights=None)  # no download, ever
        conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        with torch.no_grad():  # v7 initialises from the mean of the RGB filters
            conv1.weight.copy_(resnet.conv1.weight.mean(dim=1, keepdim=True))
        self.conv1 = conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.se1, self.se2, self.se3, self.se4 = (SqueezeExcitation(c) for c in (64, 128, 256, 512))
        self.spatial_attn = SpatialAttention()
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward_to_layer3(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.se1(self.layer1(x))
        x = self.se2(self.layer2(x))
        return self.se3(self.layer3(x))

    def forward_layer4(self, h3: torch.Tensor) -> torch.Tensor:
        return self.spatial_attn(self.se4(self.layer4(h3)))

    def pool(self, h4: torch.Tensor) -> torch.Tensor:
        return self.avgpool(h4).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_layer4(self.forward_to_layer3(x)))


class ConvAdapter(nn.Module):
    """Residual adapter: h + alpha * up1x1(ReLU(DW3x3(ReLU(BN(down1x1(h)))))), width C/reduction, no biases.

    Kaiming init scaled by 0.01 and alpha = 1, so the adapter starts close to the identity (as in v7).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.down_proj = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.dw_conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.up_proj = nn.Conv2d(hidden, channels, 1, bias=False)
        self.alpha = nn.Parameter(torch.ones(channels))
        for conv in (self.down_proj, self.dw_conv, self.up_proj):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            with torch.no_grad():
                conv.weight.mul_(0.01)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        delta = self.up_proj(F.relu(self.dw_conv(F.relu(self.bn(self.down_proj(h))))))
        return h + self.alpha[None, :, None, None] * delta


class Stage1Head(nn.Module):
    """512 -> 256 -> ReLU -> Dropout(0.3) -> 2 (v7 names: ``head.head.0`` and ``head.head.3``)."""

    def __init__(self, dropout: float = STAGE1_HEAD_DROPOUT) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(256, 2))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.head(feat)


class Stage2Head(nn.Module):
    """512 -> 256 -> ReLU -> Dropout(p1) -> 128 -> ReLU -> Dropout(p2) -> 3."""

    def __init__(self, dropout: list[float] | tuple[float, float] = (0.4, 0.4)) -> None:
        super().__init__()
        p1, p2 = dropout
        self.head = nn.Sequential(
            nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Dropout(p1),
            nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(p2),
            nn.Linear(128, 3),
        )

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.head(feat)


class Stage1Model(nn.Module):
    """Backbone + binary head (NONE vs partitioned); its state dict is the v7 ``model_state_dict``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ImprovedBackbone()
        self.head = Stage1Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class Stage2Model(nn.Module):
    """Frozen backbone + trainable adapters (after layer3+SE3 and after layer4+SE4+attention) + 3-class head.

    The backbone always stays in eval mode: ``train()`` never switches it, so its BN statistics never move.
    """

    def __init__(self, reduction: int = 4, head_dropout: list[float] | tuple[float, float] = (0.4, 0.4)) -> None:
        super().__init__()
        self.backbone = ImprovedBackbone()
        self.adapters = nn.ModuleDict({"layer3": ConvAdapter(256, reduction), "layer4": ConvAdapter(512, reduction)})
        self.head = Stage2Head(head_dropout)
        self.freeze_backbone()

    def freeze_backbone(self) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "Stage2Model":
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapters + head (what ``model.pt`` stores), cloned."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def forward_from_h3(self, h3: torch.Tensor) -> torch.Tensor:
        h4 = self.adapters["layer4"](self.backbone.forward_layer4(self.adapters["layer3"](h3)))
        return self.head(self.backbone.pool(h4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_h3(self.backbone.forward_to_layer3(x))


# --------------------------------------------------------------------------------------------- checkpoints

def _key_mismatch_message(source: str, missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    return f"{source}: model_state_dict does not match the v7 Stage-1 layout: " + ", ".join(parts)


def read_stage1_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a v7 Stage-1 checkpoint dict (tensors and plain data only), with a one-line error on failure."""
    path = Path(path)
    if not path.is_file():
        raise LossAblationError(f"{path}: Stage-1 checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch's remarks on odd content (e.g. sparse tensors): judged below
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise LossAblationError(f"{path}: cannot read Stage-1 checkpoint ({type(exc).__name__}: {exc})".split("\n")[0])
    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        raise LossAblationError(f"{path}: not a v7 Stage-1 checkpoint (no 'model_state_dict' key)")
    if not isinstance(ckpt["model_state_dict"], Mapping):
        raise LossAblationError(f"{path}: model_state_dict: expected a mapping of tensors, "
                                f"got {type(ckpt['model_state_dict']).__name__}")
    return ckpt


def _value_problem(value: Any, reference: torch.Tensor) -> str | None:
    """Why ``value`` cannot stand for the ``reference`` weight (wrong type, layout, device, shape, non-finite)."""
    if not isinstance(value, torch.Tensor):
        return f"expected a tensor, got {type(value).__name__}"
    if value.layout != torch.strided or value.device.type != "cpu" or value.is_quantized or value.is_nested:
        return f"expected a dense CPU tensor, got layout {value.layout}, device {value.device.type}"
    if value.is_floating_point() != reference.is_floating_point() or value.is_complex():
        return f"expected dtype {reference.dtype}, got {value.dtype}"
    if tuple(value.shape) != tuple(reference.shape):
        return f"expected shape {tuple(reference.shape)}, got {tuple(value.shape)}"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return "non-finite values (NaN or inf): the checkpoint is broken"
    return None


def check_stage1_state(state: Mapping[str, Any], source: str) -> None:
    """Raise LossAblationError unless ``state`` has exactly the 133 v7 Stage-1 keys, each a finite dense tensor
    of the layout's shape; the message names ``source`` and the first bad key (in the layout's order)."""
    with torch.device("meta"):  # the layout only: no memory, no draw from the random generators
        reference = Stage1Model().state_dict()
    missing = [k for k in reference if k not in state]
    unexpected = [str(k) for k in state if k not in reference]
    if missing or unexpected:
        raise LossAblationError(_key_mismatch_message(source, missing, unexpected))
    for key, ref in reference.items():
        problem = _value_problem(state[key], ref)
        if problem is not None:
            raise LossAblationError(f"{source}: model_state_dict[{key!r}]: {problem}")


def load_stage1_model(path: str | Path) -> Stage1Model:
    """A Stage1Model with the checkpoint's weights, loaded strictly."""
    ckpt = read_stage1_checkpoint(path)
    check_stage1_state(ckpt["model_state_dict"], str(path))
    model = Stage1Model()
    model.load_state_dict(ckpt["model_state_dict"], strict=True)
    return model


def build_stage2_model(stage1_path: str | Path | None, reduction: int = 4,
                       head_dropout: list[float] | tuple[float, float] = (0.4, 0.4)) -> Stage2Model:
    """Stage-2 model whose backbone comes from a v7 Stage-1 checkpoint (None: random backbone)."""
    model = Stage2Model(reduction, head_dropout)
    if stage1_path is not None:
        stage1 = load_stage1_model(stage1_path)
        model.backbone.load_state_dict(stage1.backbone.state_dict(), strict=True)
    model.freeze_backbone()
    return model


def stage1_checkpoint_dict(model: Stage1Model, optimizer: torch.optim.Optimizer | None = None,
                           scheduler: Any = None, epoch: int = 0, best_f1: float = 0.0,
                           history: list[dict] | None = None) -> dict[str, Any]:
    """The v7 Stage-1 checkpoint layout (epoch, model_state_dict, optimizer_state_dict, scheduler_state_dict,
    best_f1, history)."""
    return {
        "epoch": int(epoch),
        "model_state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer_state_dict": optimizer.state_dict() if optimizer is not None else {},
        "scheduler_state_dict": scheduler.state_dict() if scheduler is not None else {},
        "best_f1": float(best_f1),
        "history": list(history or []),
    }


# --------------------------------------------------------------------------------------------- summary

def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_summary(model: Stage2Model) -> dict[str, Any]:
    """Total, trainable, backbone, adapter (per layer) and head parameter counts of a Stage-2 model."""
    total = count_parameters(model)
    trainable = count_parameters(model, trainable_only=True)
    return {
        "total": total,
        "trainable": trainable,
        "trainable_fraction": trainable / total,
        "backbone": count_parameters(model.backbone),
        "adapters": count_parameters(model.adapters),
        "adapter_layer3": count_parameters(model.adapters["layer3"]),
        "adapter_layer4": count_parameters(model.adapters["layer4"]),
        "head": count_parameters(model.head),
    }
