"""Tests for lossablation.train.losses against the reference oracles (losses-and-stats.md §0-2), kornia, timm and
torch, plus the numerical / structural properties every arm must have."""

import math

import kornia
import pytest
import torch
import torch.nn.functional as F
from timm.loss import AsymmetricLossMultiLabel

from lossablation.config import load_config
from lossablation.errors import LossAblationError
from lossablation.train import losses
from lossablation.train.losses import (
    DEFAULT_ARMS,
    LOSS_FUNCTIONS,
    LOSS_PARAMS,
    REBALANCE_MODES,
    build_arm_loss,
    class_balanced_weights,
    loss_mass_shares,
    make_loss,
    resolve_rebalance,
)

KINDS = list(LOSS_PARAMS)
COUNTS = [5000, 30000, 1200]
# §1 fixed oracle
Z = torch.tensor([[2, 0.5, -1], [0.1, 0.2, 0.3], [-1, 3, 0], [0, 0, 4]], dtype=torch.float64)
Y = torch.tensor([0, 2, 0, 1])
W = torch.tensor([0.6130395879103492, 0.2538585558731303, 2.1331018562165207], dtype=torch.float64)
TOL = dict(rtol=0, atol=1e-9)

# Non-default parameters so that every term of every loss is exercised.
EXERCISE = {
    "cross_entropy": {},
    "focal": {"gamma": 2.0},
    "poly1": {"epsilon": 1.0},
    "asymmetric": {"gamma_pos": 2.0, "gamma_neg": 4.0, "clip": 0.05},
    "focal_label_smoothing": {"gamma": 2.0, "epsilon": 0.1},
}


def close(actual, expected, **tol):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64), **(tol or TOL)
    )


def random_batch(n=64, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=dtype) * scale
    y = torch.randint(0, 3, (n,), generator=g)
    return z, y


# ---------------------------------------------------------------- class-balanced weights (§2)
def test_cb_weights_oracle_beta_9999():
    w = class_balanced_weights(COUNTS, beta=0.9999)
    assert w.dtype == torch.float64 and w.shape == (3,)
    close(w, W)
    close(w.sum(), 3.0)


def test_cb_weights_oracle_beta_999_three_decimals():
    w = class_balanced_weights(COUNTS, beta=0.999)
    close(w, [0.879, 0.873, 1.249], rtol=0, atol=5e-4)
    close(w.sum(), 3.0)


def test_cb_weights_limits():
    close(class_balanced_weights(COUNTS, beta=0.0), [1.0, 1.0, 1.0])
    # beta -> 1: inverse frequency, normalised to sum C
    inv = torch.tensor([1 / 5000, 1 / 30000, 1 / 1200], dtype=torch.float64)
    close(class_balanced_weights(COUNTS, beta=1 - 1e-12), inv * 3 / inv.sum(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("counts, beta, culprit", [([5000, 0, 10], 0.9999, "train_class_counts"),
                                                   (COUNTS, 1.0, "cb_beta"), (COUNTS, -0.1, "cb_beta")])
def test_cb_weights_errors(counts, beta, culprit):
    with pytest.raises(LossAblationError, match=culprit):
        class_balanced_weights(counts, beta)


def test_loss_mass_shares_oracle():
    # §2: gradient mass share per class (SPLIT, RECT, AB) for counts [5000, 30000, 1200]
    # The reference prints 3 decimals; its .232 is 0.231499 (.2315 rounded up twice), hence 6e-4.
    tol = dict(rtol=0, atol=6e-4)
    close(loss_mass_shares(COUNTS), [0.138, 0.829, 0.033], **tol)
    close(loss_mass_shares(COUNTS, W), [0.232, 0.575, 0.193], **tol)
    close(loss_mass_shares(COUNTS, None, balanced_sampler=True), [1 / 3] * 3, **tol)
    close(loss_mass_shares(COUNTS, W, balanced_sampler=True), [0.204, 0.085, 0.711], **tol)


# ---------------------------------------------------------------- §1 oracle values
ORACLE = [
    ("focal", {"gamma": 2.0}, [0.006800294944812, 0.855923546163476, 2.407797171915752, 0.988681988983266],
     1.0648007505018264),
    ("focal", {"gamma": 3.0}, None, 0.9702095654612194),
    ("poly1", {"epsilon": 1.0}, [0.279370883422963, 3.487146806948990, 3.095075084855141, 1.273940390768343],
     2.0338832914988596),
    ("asymmetric", {"gamma_pos": 2.0, "gamma_neg": 4.0, "clip": 0.0}, None, 1.5768586529884243),
    ("asymmetric", {"gamma_pos": 2.0, "gamma_neg": 4.0, "clip": 0.05}, None, 1.3813643774418587),
    ("focal_label_smoothing", {"gamma": 2.0, "epsilon": 0.1}, None, 1.05681580741978),
]


@pytest.mark.parametrize("kind, params, per_sample, reduced", ORACLE)
def test_reference_oracle(kind, params, per_sample, reduced):
    loss = make_loss(kind, W, **params)
    if per_sample is not None:
        close(loss.per_sample(Z, Y), per_sample)
    out = loss(Z, Y)
    assert out.shape == () and out.dtype == torch.float64
    close(out, reduced)


def test_asymmetric_unweighted_per_sample_oracle():
    loss = make_loss("asymmetric", None, gamma_pos=2.0, gamma_neg=4.0, clip=0.0)
    close(loss.per_sample(Z, Y), [0.011274800195146, 0.409096696829816, 6.042560495226338, 6.789406753944610])


def test_poly1_is_not_the_plans_version():
    plan_row = torch.tensor([0.285444803998997, 3.019266855957641, 3.409848794829494, 1.665615298353415],
                            dtype=torch.float64)
    # The plan's code (pt = exp(-weighted CE) = p_t^{w_y}) reproduces the reference's "wrong" row ...
    ce_w = F.cross_entropy(Z, Y, weight=W, reduction="none")
    close(ce_w + 1.0 * (1 - torch.exp(-ce_w)), plan_row)
    # ... and ours differs from it on every sample.
    ours = make_loss("poly1", W, epsilon=1.0).per_sample(Z, Y)
    assert torch.all((ours - plan_row).abs() > 1e-3)


def test_reduction_divides_by_batch_size_not_weight_sum():
    ce = make_loss("cross_entropy", W)
    close(ce(Z, Y), F.cross_entropy(Z, Y, weight=W, reduction="sum") / len(Y))
    assert abs(ce(Z, Y).item() - F.cross_entropy(Z, Y, weight=W).item()) > 1e-3


# ---------------------------------------------------------------- other libraries
@pytest.mark.parametrize("gamma", [0.5, 2.0, 3.0])
def test_focal_matches_kornia(gamma):
    z, y = random_batch()
    ref = kornia.losses.focal_loss(z, y, alpha=None, gamma=gamma, reduction="none", weight=W).sum(1)
    close(make_loss("focal", W, gamma=gamma).per_sample(z, y), ref)
    close(make_loss("focal_label_smoothing", W, gamma=gamma, epsilon=0.0).per_sample(z, y), ref)


@pytest.mark.parametrize("clip", [0.0, 0.05])
@pytest.mark.parametrize("detach", [False, True])
def test_asymmetric_matches_timm(clip, detach):
    z, y = random_batch(scale=2.0)
    z_ours = z.clone().requires_grad_(True)
    z_timm = z.clone().requires_grad_(True)
    ours = make_loss("asymmetric", None, gamma_pos=2.0, gamma_neg=4.0, clip=clip, detach_focusing=detach)
    per = ours.per_sample(z_ours, y)
    logp = F.log_softmax(z_timm, dim=1)
    x = logp - torch.log1p(-logp.exp())  # sigmoid(x) = softmax(z)
    timm_loss = AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=2, clip=clip, reduction="none",
                                         disable_torch_grad_focal_loss=detach)
    ref = timm_loss(x, F.one_hot(y, 3).to(x.dtype)).sum(1)
    close(per, ref, rtol=1e-4, atol=1e-6)
    per.sum().backward()
    ref.sum().backward()
    close(z_ours.grad, z_timm.grad, rtol=1e-4, atol=1e-6)


def test_asymmetric_detach_changes_gradient_not_value():
    z, y = random_batch()
    za, zb = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    a = make_loss("asymmetric", W, detach_focusing=False)(za, y)
    b = make_loss("asymmetric", W, detach_focusing=True)(zb, y)
    close(a, b)
    a.backward()
    b.backward()
    assert (za.grad - zb.grad).abs().max() > 1e-3


def test_label_smoothing_matches_torch():
    z, y = random_batch()
    unweighted = make_loss("focal_label_smoothing", None, gamma=0.0, epsilon=0.1)
    close(unweighted(z, y), F.cross_entropy(z, y, label_smoothing=0.1))
    weighted = make_loss("focal_label_smoothing", W, gamma=0.0, epsilon=0.1)
    close(weighted.per_sample(z, y), W[y] * F.cross_entropy(z, y, label_smoothing=0.1, reduction="none"))
    # PyTorch's own weight + label_smoothing is a different loss (not w_y * l).
    torch_weighted = F.cross_entropy(z, y, weight=W, label_smoothing=0.1, reduction="none")
    assert (weighted.per_sample(z, y) - torch_weighted).abs().max() > 1e-3


# ---------------------------------------------------------------- the parameter = 0 reductions
def test_zero_parameter_reductions():
    z, y = random_batch()
    ce_w = F.cross_entropy(z, y, weight=W, reduction="none")
    close(make_loss("cross_entropy", W).per_sample(z, y), ce_w)
    close(make_loss("focal", W, gamma=0.0).per_sample(z, y), ce_w)
    close(make_loss("poly1", W, epsilon=0.0).per_sample(z, y), ce_w)
    close(make_loss("focal_label_smoothing", W, gamma=0.0, epsilon=0.0).per_sample(z, y), ce_w)
    # focal_label_smoothing at epsilon = 0 is focal
    close(make_loss("focal_label_smoothing", W, gamma=2.0, epsilon=0.0).per_sample(z, y),
          make_loss("focal", W, gamma=2.0).per_sample(z, y))
    # asymmetric with both gammas and clip at 0 is the binary CE on softmax probabilities, summed over classes
    p = torch.softmax(z, dim=1)
    bce = F.binary_cross_entropy(p, F.one_hot(y, 3).to(p.dtype), reduction="none").sum(1)
    close(make_loss("asymmetric", None, gamma_pos=0.0, gamma_neg=0.0, clip=0.0).per_sample(z, y), bce)


def test_poly1_unweighted_matches_paper_code():
    z, y = random_batch()
    pt = torch.sum(F.one_hot(y, 3) * F.softmax(z, dim=-1), dim=-1)  # Leng et al.'s reference snippet
    ref = F.cross_entropy(z, y, reduction="none") + 1.0 * (1 - pt)
    close(make_loss("poly1", None, epsilon=1.0).per_sample(z, y), ref)


# ---------------------------------------------------------------- properties, every kind
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    z, y = random_batch(n=6, scale=2.0)
    loss = make_loss(kind, W, **EXERCISE[kind])
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (z.requires_grad_(True),))
    assert torch.autograd.gradcheck(lambda t: loss.per_sample(t, y), (z.detach().requires_grad_(True),))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("big", [40.0, 200.0])
def test_finite_at_saturated_fp32_logits(kind, big):
    b = big
    z = torch.tensor([[b, -b, -b], [-b, b, -b], [b, -b, 0.0], [-b, b, b], [b, b, b], [0.0, -b, b]],
                     dtype=torch.float32)
    for y in (torch.tensor([0, 1, 0, 1, 2, 2]), torch.tensor([1, 0, 2, 0, 0, 1])):  # right and wrong
        zz = z.clone().requires_grad_(True)
        loss = make_loss(kind, W, **EXERCISE[kind])
        out = loss(zz, y)
        out.backward()
        assert out.dtype == torch.float32
        assert torch.isfinite(out) and torch.isfinite(zz.grad).all()
        assert torch.isfinite(loss.per_sample(z, y)).all()


@pytest.mark.parametrize("kind, params", [
    ("focal", {"gamma": 0.5}), ("asymmetric", {"gamma_pos": 0.5, "gamma_neg": 0.5, "clip": 0.05}),
    ("asymmetric", {"gamma_pos": 0.5, "gamma_neg": 0.5, "clip": 0.0}),
    ("focal_label_smoothing", {"gamma": 0.5, "epsilon": 0.1}),
])
def test_finite_gradients_fractional_gamma(kind, params):
    # (1-p)^g and max(p - clip, 0)^g with g < 1 have infinite derivatives at 0: naive pow gives NaN.
    z = torch.tensor([[200.0, -200.0, -200.0], [0.0, 3.0, -200.0], [1.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 1, 2])
    make_loss(kind, W, **params)(z, y).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_per_sample_non_negative(kind):
    z, y = random_batch(n=512, scale=8.0)
    assert (make_loss(kind, W, **EXERCISE[kind]).per_sample(z, y) >= 0).all()
    assert (make_loss("poly1", W, epsilon=-1.0).per_sample(z, y) >= -1e-12).all()


@pytest.mark.parametrize("kind", KINDS)
def test_batch_permutation_invariance(kind):
    z, y = random_batch()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    loss = make_loss(kind, W, **EXERCISE[kind])
    close(loss(z[perm], y[perm]), loss(z, y), rtol=1e-12, atol=1e-12)
    close(loss.per_sample(z[perm], y[perm]), loss.per_sample(z, y)[perm])


@pytest.mark.parametrize("kind", KINDS)
def test_unit_weights_equal_unweighted(kind):
    z, y = random_batch()
    a = make_loss(kind, torch.ones(3), **EXERCISE[kind])
    b = make_loss(kind, None, **EXERCISE[kind])
    close(a.per_sample(z, y), b.per_sample(z, y))
    close(a(z, y), b(z, y))
    # and weights multiply the per-sample loss of the true class, and nothing else
    close(make_loss(kind, W, **EXERCISE[kind]).per_sample(z, y), W[y] * b.per_sample(z, y))


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_logits(kind):
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 3)
    x = torch.randn(32, 8)
    y = torch.randint(0, 3, (32,))
    loss = make_loss(kind, W, **EXERCISE[kind])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
        assert logits.dtype == torch.bfloat16
        out = loss(logits, y)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    close(out, loss(logits.detach().float(), y), rtol=1e-6, atol=1e-6)
    out.backward()
    assert torch.isfinite(lin.weight.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_no_host_sync_runs_on_meta_device(kind):
    # Meta tensors have no data: any .item(), bool(tensor) or data-dependent branch would raise.
    loss = make_loss(kind, W, **EXERCISE[kind]).to("meta")
    z = torch.empty(16, 3, device="meta", requires_grad=True)
    out = loss(z, torch.empty(16, dtype=torch.long, device="meta"))
    out.backward()
    assert out.shape == () and z.grad.shape == (16, 3)


# ---------------------------------------------------------------- configuration
def test_loss_params_table():
    assert LOSS_PARAMS == {
        "cross_entropy": {},
        "focal": {"gamma": 2.0},
        "poly1": {"epsilon": 1.0},
        "asymmetric": {"gamma_pos": 2.0, "gamma_neg": 4.0, "clip": 0.0, "detach_focusing": False},
        "focal_label_smoothing": {"gamma": 2.0, "epsilon": 0.1},
    }


def test_unknown_kind_names_culprit_and_lists_valid():
    with pytest.raises(ValueError, match="'focall'") as exc:
        make_loss("focall", W)
    assert isinstance(exc.value, LossAblationError)
    assert all(kind in str(exc.value) for kind in KINDS)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_param_names_culprit_and_lists_valid(kind):
    with pytest.raises(ValueError, match="'gama'") as exc:
        make_loss(kind, W, gama=2.0)
    assert isinstance(exc.value, LossAblationError)
    assert all(p in str(exc.value) for p in LOSS_PARAMS[kind])


@pytest.mark.parametrize("kind, params, culprit", [
    ("focal", {"gamma": -1.0}, "gamma"), ("poly1", {"epsilon": -2.0}, "epsilon"),
    ("asymmetric", {"clip": 1.0}, "clip"), ("asymmetric", {"detach_focusing": 1}, "detach_focusing"),
    ("focal_label_smoothing", {"epsilon": 1.5}, "epsilon"), ("focal", {"gamma": "2"}, "gamma"),
    ("focal", {"gamma": math.nan}, "gamma"),
])
def test_bad_param_values(kind, params, culprit):
    with pytest.raises(ValueError, match=culprit):
        make_loss(kind, None, **params)


def test_default_arms_are_the_plans_five():
    assert list(DEFAULT_ARMS) == ["baseline", "focal_gamma3", "poly", "asymmetric", "focal_smoothing"]
    expected = [reduced for _, _, _, reduced in ORACLE]
    got = [build_arm_loss(arm, COUNTS, 0.9999, "loss_weights")(Z, Y) for arm in DEFAULT_ARMS.values()]
    # baseline, focal_gamma3, poly, asymmetric (clip 0), focal_smoothing -> the oracle's reduced values
    close(torch.stack(got), [expected[0], expected[1], expected[2], expected[3], expected[5]])


@pytest.mark.parametrize("rebalance, weighting, expected", [
    ("loss_weights", "class_balanced", W), ("loss_weights", "none", [1.0, 1.0, 1.0]),
    ("sampler", "class_balanced", [1.0, 1.0, 1.0]), ("both", "class_balanced", W),
    ("both", "none", [1.0, 1.0, 1.0]), ("none", "class_balanced", [1.0, 1.0, 1.0]),
])
def test_build_arm_loss_rebalance(rebalance, weighting, expected):
    arm = {"kind": "focal", "params": {"gamma": 2.0}, "weighting": weighting}
    loss = build_arm_loss(arm, COUNTS, 0.9999, rebalance)
    close(loss.weight, expected)
    assert set(REBALANCE_MODES) == {"loss_weights", "sampler", "both", "none"}


def sweep_config(arms: dict, rebalance: str = "loss_weights") -> dict:
    """A minimal sweep config around ``arms`` (validated by ``load_config`` without touching the disk)."""
    return {"dataset": "unused.npz", "losses": arms, "baseline": next(iter(arms)), "train": {"rebalance": rebalance}}


@pytest.mark.parametrize("arm, rebalance, culprit", [
    ({"kind": "focal", "weighting": "inverse"}, "loss_weights", "weighting"),
    ({"kind": "focal", "weighting": "none"}, "oversample", "rebalance"),
    ({"kind": "focal", "params": {"gama": 1}, "weighting": "none"}, "none", "gama"),
    ({"kind": "focal", "extra": 1}, "none", "extra"),
    ({"params": {}}, "none", "kind"),
])
def test_arm_errors_are_refused_when_the_config_is_loaded(arm, rebalance, culprit):
    """An arm is validated once, at config load (``build_arm_loss`` trusts the validated entry)."""
    with pytest.raises(LossAblationError, match=culprit) as exc:
        load_config(sweep_config({"myarm": arm}, rebalance), check_paths=False)
    assert "\n" not in str(exc.value)


def test_loss_params_validated_once_per_job(monkeypatch):
    calls = []
    check = losses.check_loss_params
    monkeypatch.setattr(losses, "check_loss_params", lambda *a, **k: calls.append(a[0]) or check(*a, **k))
    cfg = load_config(sweep_config({"a": {"kind": "focal"}, "b": {"kind": "poly1", "params": {"epsilon": 2}}}),
                      check_paths=False)
    assert calls == ["focal", "poly1"]                                   # once per arm, at load
    built = [build_arm_loss(arm, COUNTS, 0.9999, "loss_weights") for arm in cfg["losses"].values()]
    assert calls == ["focal", "poly1"]                                   # building the losses re-checks nothing
    assert [loss.params for loss in built] == [{"gamma": 2.0}, {"epsilon": 2.0}]   # defaults filled, floats


def test_unknown_kind_at_config_load_lists_the_registry():
    with pytest.raises(LossAblationError, match="losses.myarm.kind") as exc:
        load_config(sweep_config({"myarm": {"kind": "hinge"}}), check_paths=False)
    assert all(kind in str(exc.value) for kind in LOSS_FUNCTIONS) and "\n" not in str(exc.value)


def test_rebalance_resolved_in_one_place():
    assert {mode: resolve_rebalance(mode) for mode in REBALANCE_MODES} == {
        "loss_weights": (True, False), "sampler": (False, True), "both": (True, True), "none": (False, False)}
    with pytest.raises(LossAblationError, match="train.rebalance.*'oversample'"):
        resolve_rebalance("oversample")


def test_user_defined_arm_from_config_alone():
    arm = {"kind": "asymmetric", "params": {"gamma_neg": 1.0, "clip": 0.05, "detach_focusing": True},
           "weighting": "class_balanced"}
    loss = build_arm_loss(arm, COUNTS, 0.9999, "loss_weights")
    assert loss.params == {"gamma_pos": 2.0, "gamma_neg": 1.0, "clip": 0.05, "detach_focusing": True}
    assert torch.isfinite(loss(Z, Y))
