"""The ablation's losses, class-balanced weights and the arm -> loss-module factory.

One convention for every loss (docs/losses.md, where the formulas are): each loss function below returns an
UNWEIGHTED per-sample loss ``l_i`` (summed over classes where the loss has per-class terms); a loss module
multiplies it by the class weight of the sample's true class and reduces as ``sum_i w[y_i] * l_i / N``
(divide by the batch size, never by the sum of weights, so every arm sees the same scale / learning rate).

Numerics: everything is computed from ``log_softmax``; ``log(1 - p_j)`` is
``logsumexp_{k != j} z_k - logsumexp_k z_k`` so that saturated logits (+-200 in fp32) stay finite, and
focusing weights are ``exp(gamma * log(...))`` rather than ``pow`` so their gradients are finite too.
Low-precision logits (bf16 / fp16, e.g. under autocast) are computed in float32; float64 stays float64
(for gradcheck). No Python loops over samples and no host synchronisation.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Mapping, Sequence
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from lossablation.errors import LossAblationError

__all__ = [
    "LossConfigError",
    "class_balanced_weights",
    "loss_mass_shares",
    "cross_entropy",
    "focal",
    "poly1",
    "asymmetric",
    "focal_label_smoothing",
    "LOSS_FUNCTIONS",
    "LOSS_PARAMS",
    "DEFAULT_ARMS",
    "WEIGHTINGS",
    "REBALANCE_MODES",
    "resolve_rebalance",
    "check_loss_params",
    "complete_params",
    "ClassWeightedLoss",
    "make_loss",
    "build_arm_loss",
]


class LossConfigError(LossAblationError, ValueError):
    """A bad loss kind / parameter / weighting: a one-line user error that is also a ``ValueError``."""


# --------------------------------------------------------------------------------------------------
# Class-balanced weights (Cui et al. 2019)
# --------------------------------------------------------------------------------------------------
def class_balanced_weights(counts, beta: float = 0.9999) -> torch.Tensor:
    """Effective-number weights ``w_c = (1 - beta) / (1 - beta**n_c)``, normalised so ``sum(w) = C``.

    ``counts`` are the per-class sample counts of the TRAINING split (index = class). Returns a float64
    tensor of shape (C,). ``beta = 0`` gives all ones; beta -> 1 tends to inverse-frequency weights.
    """
    beta_f = float(beta)
    if not (0.0 <= beta_f < 1.0):
        raise LossConfigError(f"train.cb_beta: must be in [0, 1), got {beta!r}")
    n = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if n.numel() == 0:
        raise LossConfigError("train_class_counts: empty")
    if not bool(torch.all(torch.isfinite(n) & (n > 0))):
        raise LossConfigError(
            f"train_class_counts: every class needs at least one training sample, got {n.tolist()}"
        )
    if beta_f == 0.0:
        effective = torch.ones_like(n)
    else:
        # 1 - beta^n computed as -expm1(n log beta): no cancellation for beta close to 1.
        effective = -torch.expm1(n * math.log(beta_f)) / (1.0 - beta_f)
    w = 1.0 / effective
    return w * (n.numel() / w.sum())


def loss_mass_shares(counts, weights=None, balanced_sampler: bool = False) -> torch.Tensor:
    """Share of the total loss (gradient) mass per class: ``s_c ∝ m_c * w_c`` with ``m_c`` the class's
    sampling frequency (``n_c`` from the data, or uniform under a class-balanced sampler).

    Used to document / log how strongly a re-balancing choice shifts the training signal between classes.
    """
    n = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    m = torch.ones_like(n) if balanced_sampler else n
    w = torch.ones_like(n) if weights is None else torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    mass = m * w
    return mass / mass.sum()


# --------------------------------------------------------------------------------------------------
# Numerically stable building blocks
# --------------------------------------------------------------------------------------------------
def _compute_dtype_logits(logits: torch.Tensor) -> torch.Tensor:
    """float32 for bf16/fp16 (autocast) logits, float64 kept as is."""
    if logits.dim() != 2 or logits.shape[-1] < 2:
        raise ValueError(f"logits: expected shape (N, C) with C >= 2, got {tuple(logits.shape)}")
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _no_autocast(logits: torch.Tensor):
    """Disable autocast for the loss maths (on devices that have autocast; e.g. not ``meta``)."""
    dev = logits.device.type
    if torch.amp.is_autocast_available(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()


def _log1m_softmax(z: torch.Tensor) -> torch.Tensor:
    """``log(1 - softmax(z))`` per class, as ``logsumexp_{k != j} z_k - logsumexp_k z_k`` (N, C).

    Stable for saturated logits, where ``1 - p_j`` underflows / cancels in floating point.
    """
    c = z.shape[-1]
    eye = torch.eye(c, dtype=torch.bool, device=z.device)
    others = z.unsqueeze(-2).expand(*z.shape[:-1], c, c).masked_fill(eye, float("-inf"))
    return torch.logsumexp(others, dim=-1) - torch.logsumexp(z, dim=-1, keepdim=True)


def _pick(t: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``t[i, y_i]`` (N,)."""
    return t.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def _prepare(logits: torch.Tensor, targets: torch.Tensor):
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets: expected shape ({logits.shape[0]},) class indices, got {tuple(targets.shape)}"
        )
    z = _compute_dtype_logits(logits)
    return z, F.log_softmax(z, dim=-1), targets.long()


# --------------------------------------------------------------------------------------------------
# Unweighted per-sample losses: f(logits (N, C), targets (N,), **params) -> (N,)
# --------------------------------------------------------------------------------------------------
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-log p_t``."""
    with _no_autocast(logits):
        _, logp, y = _prepare(logits, targets)
        return -_pick(logp, y)


def focal(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Softmax focal loss (Lin et al. 2017): ``-(1 - p_t)^gamma log p_t``; gamma = 0 is cross-entropy."""
    with _no_autocast(logits):
        z, logp, y = _prepare(logits, targets)
        log1mp_t = _pick(_log1m_softmax(z), y)
        return -torch.exp(gamma * log1mp_t) * _pick(logp, y)


def poly1(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 1.0) -> torch.Tensor:
    """Poly-1 (Leng et al. 2022): ``-log p_t + epsilon (1 - p_t)`` with the TRUE softmax ``p_t``.

    (Not ``p_t = exp(-weighted CE)`` as the plan codes it, which is ``p_t^{w_y}``.) ``epsilon >= -1``
    keeps it non-negative.
    """
    with _no_autocast(logits):
        z, logp, y = _prepare(logits, targets)
        one_minus_pt = torch.exp(_pick(_log1m_softmax(z), y))
        return -_pick(logp, y) + epsilon * one_minus_pt


def asymmetric(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_pos: float = 2.0,
    gamma_neg: float = 4.0,
    clip: float = 0.0,
    detach_focusing: bool = False,
) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al. 2021) applied to softmax probabilities, summed over classes::

        l = -[ (1 - p_y)^{gamma_pos} log p_y + sum_{j != y} p_m,j^{gamma_neg} log(1 - p_m,j) ],
        p_m = max(p - clip, 0)

    ``clip`` is the paper's probability margin on negatives (paper 0.05; the plan's arm uses 0).
    ``detach_focusing=True`` treats the focusing weights as constants in the backward pass (the official
    implementation's ``disable_torch_grad_focal_loss``); the default False differentiates through them,
    like timm and the loss's formula.
    """
    with _no_autocast(logits):
        z, logp, y = _prepare(logits, targets)
        log1mp = _log1m_softmax(z)
        pos = F.one_hot(y, z.shape[-1]).to(torch.bool)
        if clip > 0:
            # log(1 - p_m) = log(min(1 - p + clip, 1)); log p_m = log(max(p - clip, 0)) (may be -inf).
            log1m_pm = torch.logaddexp(log1mp, torch.full_like(log1mp, math.log(clip))).clamp(max=0.0)
            pm = (torch.exp(logp) - clip).clamp(min=0.0)
            active = pm > 0
            # double-where: no inf * 0 in the backward pass where the margin zeroes p_m.
            log_pm = torch.log(torch.where(active, pm, torch.ones_like(pm)))
            neg_focus = torch.where(active, torch.exp(gamma_neg * log_pm), torch.zeros_like(pm))
        else:
            log1m_pm = log1mp
            neg_focus = torch.exp(gamma_neg * logp)
        pos_focus = torch.exp(gamma_pos * log1mp)
        if detach_focusing:
            pos_focus, neg_focus = pos_focus.detach(), neg_focus.detach()
        terms = torch.where(pos, pos_focus * logp, neg_focus * log1m_pm)
        return -terms.sum(dim=-1)


def focal_label_smoothing(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, epsilon: float = 0.1
) -> torch.Tensor:
    """Focal loss on label-smoothed targets: ``-sum_c q_c (1 - p_c)^gamma log p_c``,
    ``q = (1 - epsilon) onehot + epsilon / C``. epsilon = 0 is focal; gamma = 0 is label-smoothed CE."""
    with _no_autocast(logits):
        z, logp, y = _prepare(logits, targets)
        c = z.shape[-1]
        q = F.one_hot(y, c).to(z.dtype) * (1.0 - epsilon) + epsilon / c
        return -(q * torch.exp(gamma * _log1m_softmax(z)) * logp).sum(dim=-1)


LOSS_FUNCTIONS = {
    "cross_entropy": cross_entropy,
    "focal": focal,
    "poly1": poly1,
    "asymmetric": asymmetric,
    "focal_label_smoothing": focal_label_smoothing,
}


def _params_of(fn) -> dict:
    sig = inspect.signature(fn)
    return {n: p.default for n, p in list(sig.parameters.items())[2:]}


#: kind -> {param: default}, read off the loss functions' signatures (single source of the defaults).
LOSS_PARAMS: dict[str, dict] = {kind: _params_of(fn) for kind, fn in LOSS_FUNCTIONS.items()}

#: param -> (predicate, description) for value checks.
_PARAM_RANGES = {
    ("focal", "gamma"): (lambda v: v >= 0, ">= 0"),
    ("poly1", "epsilon"): (lambda v: v >= -1, ">= -1 (keeps the loss non-negative)"),
    ("asymmetric", "gamma_pos"): (lambda v: v >= 0, ">= 0"),
    ("asymmetric", "gamma_neg"): (lambda v: v >= 0, ">= 0"),
    ("asymmetric", "clip"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("focal_label_smoothing", "gamma"): (lambda v: v >= 0, ">= 0"),
    ("focal_label_smoothing", "epsilon"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
}

WEIGHTINGS = ("class_balanced", "none")

#: ``train.rebalance`` -> (class-balanced weights in the loss, class-balanced sampler); read through
#: :func:`resolve_rebalance`, the one place a mode is interpreted.
_REBALANCE = {
    "loss_weights": (True, False),   # CB weights in the loss (when the arm's weighting is class_balanced)
    "sampler": (False, True),        # a class-balanced sampler; the sampled data is already uniform: weights 1
    "both": (True, True),            # the v7 behaviour; over-corrects toward the rarest class
    "none": (False, False),
}
REBALANCE_MODES = tuple(_REBALANCE)

#: The plan's five arms, in the config's ``losses:`` form.
DEFAULT_ARMS: dict[str, dict] = {
    "baseline": {"kind": "focal", "params": {"gamma": 2.0}, "weighting": "class_balanced"},
    "focal_gamma3": {"kind": "focal", "params": {"gamma": 3.0}, "weighting": "class_balanced"},
    "poly": {"kind": "poly1", "params": {"epsilon": 1.0}, "weighting": "class_balanced"},
    "asymmetric": {
        "kind": "asymmetric",
        "params": {"gamma_pos": 2.0, "gamma_neg": 4.0, "clip": 0.0},
        "weighting": "class_balanced",
    },
    "focal_smoothing": {
        "kind": "focal_label_smoothing",
        "params": {"gamma": 2.0, "epsilon": 0.1},
        "weighting": "class_balanced",
    },
}


def resolve_rebalance(mode: str) -> tuple[bool, bool]:
    """``train.rebalance`` as (class-balanced loss weights, class-balanced sampler); used by both.

    ``loss_weights``: CB weights in the loss when the arm's ``weighting`` is ``class_balanced`` (data sampled as
    is); ``sampler``: draw training batches class-balanced (with replacement), loss weights all 1; ``both``:
    both at once; ``none``: neither.
    """
    try:
        return _REBALANCE[mode]
    except (KeyError, TypeError):
        raise LossConfigError(f"train.rebalance: unknown {mode!r}; valid: {', '.join(REBALANCE_MODES)}") from None


def check_loss_params(kind: str, params: Mapping | None, key: str = "losses") -> dict:
    """Validate ``kind`` and ``params`` and return the full parameter dict (defaults filled in).

    ``load_config`` calls it once per arm; the loss kinds are the keys of ``LOSS_FUNCTIONS`` (their only list).
    Raises LossConfigError (a ValueError) naming ``key``, the culprit, and the valid choices.
    """
    if kind not in LOSS_PARAMS:
        raise LossConfigError(f"{key}: unknown loss kind {kind!r}; valid kinds: {', '.join(LOSS_PARAMS)}")
    valid = LOSS_PARAMS[kind]
    params = dict(params or {})
    unknown = [p for p in params if p not in valid]
    if unknown:
        raise LossConfigError(
            f"{key}: unknown parameter {unknown[0]!r} for loss {kind!r}; valid: {', '.join(valid) or '(none)'}"
        )
    for name, value in {**valid, **params}.items():
        if isinstance(valid[name], bool):
            if not isinstance(value, bool):
                raise LossConfigError(f"{key}: parameter {name!r} of {kind!r} must be true/false, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise LossConfigError(f"{key}: parameter {name!r} of {kind!r} must be a finite number, got {value!r}")
        rng = _PARAM_RANGES.get((kind, name))
        if rng is not None and not rng[0](float(value)):
            raise LossConfigError(f"{key}: parameter {name!r} of {kind!r} must be {rng[1]}, got {value!r}")
    return complete_params(kind, params)


def complete_params(kind: str, params: Mapping | None) -> dict:
    """Every parameter of ``kind``, defaults filled in, numbers as floats: what a loss module stores and a run
    records. No checks: for parameters already validated (by ``check_loss_params``, at config load)."""
    full = {**LOSS_PARAMS[kind], **(params or {})}
    return {name: value if isinstance(value, bool) else float(value) for name, value in full.items()}


class ClassWeightedLoss(nn.Module):
    """``forward(logits, targets)`` = ``sum_i w[y_i] l_i / N`` for one loss kind.

    ``params``: the loss's full, already validated parameters (``check_loss_params`` / ``complete_params``).
    ``weight`` (C,) is a buffer (moves with ``.to(device)``), or None for the unweighted loss.
    ``per_sample(logits, targets)`` returns ``w[y_i] l_i`` (N,), for tests and divergence checks.
    """

    def __init__(self, kind: str, weight=None, *, params: Mapping):
        super().__init__()
        self.params = dict(params)
        self.kind = kind
        self._fn = LOSS_FUNCTIONS[kind]
        w = None if weight is None else torch.as_tensor(weight, dtype=torch.float64).reshape(-1).clone()
        if w is not None and not bool(torch.all(torch.isfinite(w) & (w >= 0))):
            raise LossConfigError(f"class weights: must be finite and >= 0, got {w.tolist()}")
        self.register_buffer("weight", w)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self._fn(logits, targets, **self.params)
        if self.weight is None:
            return loss
        return loss * self.weight.to(loss.dtype)[targets.long()]

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per = self.per_sample(logits, targets)
        return per.sum() / per.shape[0]

    def extra_repr(self) -> str:
        w = None if self.weight is None else [round(v, 4) for v in self.weight.tolist()]
        return f"kind={self.kind!r}, params={self.params}, weight={w}"


def make_loss(kind: str, weights=None, **params) -> ClassWeightedLoss:
    """The loss module for ``kind`` with class ``weights`` (None = unweighted) and loss ``params`` (validated
    here: this is the entry point for scripts)."""
    return ClassWeightedLoss(kind, weights, params=check_loss_params(kind, params))


def build_arm_loss(arm_cfg: Mapping, train_class_counts: Sequence, beta: float, rebalance: str) -> ClassWeightedLoss:
    """Build one arm's loss from its validated config entry ``{"kind", "params", "weighting"}``.

    The entry comes from ``load_config`` (which validated it and filled ``params`` and ``weighting``); it is not
    checked again here. ``train_class_counts``: per-class counts of this seed's training split (index = class,
    SPLIT/RECT/AB). Class-balanced weights (``beta``) are used when ``train.rebalance`` puts them in the loss
    (:func:`resolve_rebalance`) and the arm's ``weighting`` is ``class_balanced``; otherwise all weights are 1.
    The returned module always carries an explicit weight vector, so ``loss.weight.tolist()`` is what a run
    records as ``class_weights``.
    """
    use_loss_weights, _ = resolve_rebalance(rebalance)
    if use_loss_weights and arm_cfg["weighting"] == "class_balanced":
        weights = class_balanced_weights(train_class_counts, beta)
    else:
        weights = torch.ones(torch.as_tensor(train_class_counts).numel(), dtype=torch.float64)
    kind = arm_cfg["kind"]
    return ClassWeightedLoss(kind, weights, params=complete_params(kind, arm_cfg["params"]))
