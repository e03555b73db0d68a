"""Several Stage-2 runs' training forward as one batched model (a "pack": the members of one training job).

Each member keeps its own ``Stage2Model`` (adapters and head are its own ``nn.Parameter``s, its own optimizer
steps them, and its own validation runs through ``FastStage2``); only the training forward is shared. Per step
the members' batches arrive as (K, B, 256) h3 rows. The members' adapter and head weights are stacked
(``torch.stack`` of the parameters: gradients flow back to each member's own tensors) and applied as batched
products (``bmm`` / ``baddbmm``); the frozen layer4 / SE4 / attention, which all members share, run once on the
(K*B, C) rows of all members together (row-wise maps: a member's rows never mix with another's). That turns a
step of many small matrix products into a few large ones.

What stays per member, so that a member trains as it would alone:
- BatchNorm of the adapters uses the member's own batch statistics and updates its own running statistics
  (train-mode BatchNorm2d on a 1x1 map, written out: biased variance to normalise, unbiased for the running
  estimate, ``momentum`` 0.1);
- dropout draws its masks from the member's own generator exactly as ``F.dropout`` on a CPU does
  (``bernoulli_(1 - p)`` then ``/ (1 - p)``), so a member seeded like a solo run draws the solo run's masks.
The result equals a solo run up to float rounding (batched vs single matrix products; tests/test_pack.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lossablation.model.fastpath import FastStage2
from lossablation.model.networks import ConvAdapter, Stage2Model


class PackedStage2:
    """Training forward of members ``models`` (K Stage2Models sharing one frozen backbone) on (K, B, 256).

    Not an ``nn.Module``: it owns no parameters (the members do). Training mode only (batch statistics, dropout):
    a member is evaluated alone, through its own ``FastStage2``.
    """

    def __init__(self, frozen: FastStage2, models: list[Stage2Model], generators: list[torch.Generator]) -> None:
        if not models or len(models) != len(generators):
            raise ValueError("PackedStage2: one generator per member, at least one member")
        self.frozen = frozen                        # layer4 / SE4 / attention of the shared backbone
        self.models = models
        self.generators = generators
        head = models[0].head.head
        self.dropout = (head[2].p, head[5].p)

    def __call__(self, h3: torch.Tensor, members: list[int]) -> torch.Tensor:
        """Logits (K', B, 3) of ``members`` (indices into the pack) for their batches ``h3`` (K', B, 256)."""
        models = [self.models[k] for k in members]
        kk, b, _ = h3.shape
        h = _adapter(h3, [m.adapters["layer3"] for m in models])
        flat = self.frozen.attn(self.frozen.se4(self.frozen.layer4(h.reshape(kk * b, -1))))
        h = _adapter(flat.reshape(kk, b, -1), [m.adapters["layer4"] for m in models])
        return _head(h, [m.head.head for m in models], [self.generators[k] for k in members], self.dropout)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors) if len(tensors) > 1 else tensors[0].unsqueeze(0)


def _adapter(h: torch.Tensor, adapters: list[ConvAdapter]) -> torch.Tensor:
    """ConvAdapter on 1x1 maps for each member: h (K, B, C) -> (K, B, C) (cf. ``fastpath.adapter_forward_flat``)."""
    down = _stack([a.down_proj.weight[:, :, 0, 0] for a in adapters])          # (K, hidden, C)
    z = torch.bmm(h, down.transpose(1, 2))
    z = F.relu(_batch_norm(z, [a.bn for a in adapters]))
    k = adapters[0].dw_conv.kernel_size[0] // 2
    dw = _stack([a.dw_conv.weight[:, 0, k, k] for a in adapters])              # (K, hidden)
    z = F.relu(z * dw[:, None, :])
    up = _stack([a.up_proj.weight[:, :, 0, 0] for a in adapters])              # (K, C, hidden)
    alpha = _stack([a.alpha for a in adapters])                                 # (K, C)
    return h + alpha[:, None, :] * torch.bmm(z, up.transpose(1, 2))


def _batch_norm(z: torch.Tensor, norms: list[nn.BatchNorm2d]) -> torch.Tensor:
    """Each member's train-mode BatchNorm2d on its (B, hidden) rows: its batch statistics, and its running
    statistics updated as the module would update them."""
    weight = _stack([n.weight for n in norms])[:, None, :]
    bias = _stack([n.bias for n in norms])[:, None, :]
    eps = norms[0].eps
    mean = z.mean(dim=1, keepdim=True)
    var = z.var(dim=1, unbiased=False, keepdim=True)
    with torch.no_grad():
        n = z.shape[1]
        unbiased = var.squeeze(1) * (n / max(1, n - 1))
        for i, norm in enumerate(norms):
            m = norm.momentum
            norm.running_mean.mul_(1 - m).add_(mean[i, 0], alpha=m)
            norm.running_var.mul_(1 - m).add_(unbiased[i], alpha=m)
            norm.num_batches_tracked.add_(1)
    return (z - mean) * torch.rsqrt(var + eps) * weight + bias


def _linear(x: torch.Tensor, layers: list[nn.Linear]) -> torch.Tensor:
    weight = _stack([layer.weight for layer in layers])                         # (K, out, in)
    bias = _stack([layer.bias for layer in layers])                             # (K, out)
    return torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))


def _dropout(x: torch.Tensor, p: float, generators: list[torch.Generator]) -> torch.Tensor:
    """Dropout with each member's mask drawn from its own generator, the way ``F.dropout`` draws it on a CPU."""
    if p == 0:
        return x
    noise = torch.empty_like(x)
    for i, gen in enumerate(generators):
        noise[i].bernoulli_(1 - p, generator=gen)
    return x * noise.div_(1 - p)


def _head(h: torch.Tensor, heads: list[nn.Sequential], generators: list[torch.Generator],
          dropout: tuple[float, float]) -> torch.Tensor:
    """Stage2Head (512 -> 256 -> 128 -> 3 with ReLU and dropout) of each member on (K, B, 512)."""
    x = _dropout(F.relu(_linear(h, [hd[0] for hd in heads])), dropout[0], generators)
    x = _dropout(F.relu(_linear(x, [hd[3] for hd in heads])), dropout[1], generators)
    return _linear(x, [hd[6] for hd in heads])
