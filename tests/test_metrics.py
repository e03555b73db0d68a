"""Metrics against the oracles of losses-and-stats.md §4-5 and against torchmetrics."""

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from lossablation.train.metrics import calibration_errors, classification_metrics, macro_f1

P = np.array([[.91, .06, .03], [.82, .10, .08], [.20, .74, .06], [.15, .63, .22], [.40, .45, .15], [.05, .12, .83],
              [.33, .31, .36], [.58, .21, .21], [.10, .86, .04], [.48, .44, .08], [.07, .25, .68], [.97, .02, .01]])
Y = np.array([0, 1, 1, 2, 1, 2, 0, 0, 1, 1, 2, 0])


def test_calibration_oracle():
    ece, mce = calibration_errors(Y, P, 15)
    assert ece == pytest.approx(73 / 240, abs=1e-9) and mce == pytest.approx(0.63, abs=1e-9)
    ece, mce = calibration_errors(Y, P, 10)
    assert ece == pytest.approx(41 / 240, abs=1e-9) and mce == pytest.approx(0.42, abs=1e-9)


@pytest.mark.parametrize("n_bins", [5, 15])
def test_calibration_matches_torchmetrics(n_bins):
    rng = np.random.default_rng(n_bins)
    logits = rng.normal(0, 2, size=(2000, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 3, 2000)
    ece, mce = calibration_errors(y, probs, n_bins)
    pt, yt = torch.tensor(probs, dtype=torch.float64), torch.tensor(y)
    ref_ece = MulticlassCalibrationError(num_classes=3, n_bins=n_bins, norm="l1")(pt, yt).item()
    ref_mce = MulticlassCalibrationError(num_classes=3, n_bins=n_bins, norm="max")(pt, yt).item()
    assert ece == pytest.approx(ref_ece, abs=1e-6) and mce == pytest.approx(ref_mce, abs=1e-6)


def one_hot_probs(pred):
    p = np.full((len(pred), 3), 0.1)
    p[np.arange(len(pred)), pred] = 0.8
    return p


def test_macro_metrics_oracle():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
    yhat = np.array([0, 1, 1, 1, 1, 1, 1, 0, 1, 1])
    m = classification_metrics(y, one_hot_probs(yhat), loss=0.5)
    assert m["macro_precision"] == pytest.approx(0.3333333333, abs=1e-9)
    assert m["macro_recall"] == pytest.approx(0.3777777778, abs=1e-9)
    assert m["macro_f1"] == pytest.approx(0.3384615385, abs=1e-9)
    f1 = [m["per_class"][c]["f1"] for c in ("SPLIT", "RECT", "AB")]
    assert f1 == pytest.approx([0.4, 0.6153846, 0.0], abs=1e-7)
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["accuracy"] == pytest.approx(0.5)
    assert [m["per_class"][c]["support"] for c in ("SPLIT", "RECT", "AB")] == [3, 5, 2]
    assert m["n"] == 10 and m["loss"] == 0.5
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3) and np.allclose(cm.sum(1), 1) and cm[1, 1] == pytest.approx(0.8)
    assert macro_f1(y, yhat) == pytest.approx(0.3384615385, abs=1e-9)


def test_absent_class_still_counts():
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(y, one_hot_probs(np.array([0, 0, 1, 1])))
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["AB"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "support": 0}
    assert m["confusion_matrix"][2] == [0.0, 0.0, 0.0]


def test_confidence_on_a_bin_edge_goes_to_the_bin_it_opens():
    """Edges by hand, 10 bins: 0.5 -> [0.5, 0.6), 0.6 -> [0.6, 0.7), 1.0 -> the last bin [0.9, 1.0]."""
    from lossablation.train.metrics import calibration_errors, reliability_bins

    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [0.25, 0.5, 0.25], [0.2, 0.2, 0.6]])
    labels = np.array([0, 1, 0, 1, 1])  # correct, wrong, correct, correct, wrong
    bins = reliability_bins(probs, labels, n_bins=10).set_index("lo")
    assert list(bins["count"].round(6)) == [0, 0, 0, 0, 0, 2, 2, 0, 0, 1]
    # [0.5, 0.6): conf 0.5, acc 0.5, gap 0;  [0.6, 0.7): conf 0.6, acc 0.5, gap 0.1;  last: conf 1, acc 1
    ece, mce = calibration_errors(labels, probs, n_bins=10)
    assert ece == pytest.approx(2 / 5 * 0.1, abs=1e-12) and mce == pytest.approx(0.1, abs=1e-12)
