"""summary.md (the plan's results document), the hypothesis verdicts, the trade-off table and performance by QP."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures_runs import ORACLE, SEEDS, write_sweep
from lossablation.analysis import aggregate as agg
from lossablation.analysis import hypotheses, verdicts
from lossablation.config import load_config
from lossablation.errors import LossAblationError

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ("Which loss brought the largest gain?", "Which loss benefited AB (the hard class) most?",
             "Is there a precision/recall trade-off?", "Did label smoothing improve calibration?")
PRIMARY = ("supported", "refuted", "not established", "not assessable")
FOUR_LEVELS = np.repeat([16, 28, 40, 52], 75)          # 300 test blocks, like the demo's four cq levels


def default_cfg(seeds=SEEDS) -> dict:
    """The default sweep's config (arms and their hypothesis blocks), with the fixture's seeds."""
    cfg = load_config(ROOT / "config" / "config.yaml", check_paths=False)
    cfg["seeds"] = list(seeds)
    return cfg


def run_sweep(tmp_path, values=ORACLE, seeds=SEEDS, qp=None, ab=None, figures=False):
    runs = write_sweep(tmp_path / "runs", values, seeds=seeds, qp=qp, ab=ab)
    out = tmp_path / "out"
    agg.aggregate(default_cfg(seeds), runs, out, make_figures=figures)
    return out


# ------------------------------------------------------------------------------ every number is traceable
#: prose that is not a result: section and hypothesis labels, the protocol's fixed levels
LABELS = (r"§[\d.]+", r"\bH\d\b", r"Tables? \d(-\d)?", r"Figure \d", r"Risco \d", r"Fase \d", r"Stage-1",
          r"80 %", r"\+1 pp", r"95 %")
NUMBER = re.compile(r"(?<![\w.^/])[+-]?\d+(?:\.\d+)?")


def numbers_in(text: str) -> list[str]:
    for label in LABELS:
        text = re.sub(label, " ", text)
    return NUMBER.findall(text)


def traced_sources(out: Path, cfg: dict) -> tuple[set[str], list[float]]:
    """Number strings of the Markdown tables and paired_tests.csv, and the csv's numeric values; plus the
    config's predictions and the §7 criteria (inputs, not results)."""
    tokens = set()
    for md in (out / "tables").glob("*.md"):
        tokens |= {t.lstrip("+") for t in NUMBER.findall(md.read_text())}
    csv = pd.read_csv(out / "paired_tests.csv")
    values = [float(v) for v in csv.select_dtypes("number").to_numpy().ravel() if np.isfinite(v)]
    inputs = [v for spec in cfg["losses"].values() if spec.get("hypothesis")
              for v in spec["hypothesis"]["predicted_gain_pp"]]
    inputs += [verdicts.COMPLETE_DELTA, verdicts.PARTIAL_DELTA, verdicts.FAILURE_DELTA, verdicts.COMPLETE_AB_F1]
    return tokens, values + inputs


def untraced(summary: str, tokens: set[str], values: list[float]) -> list[str]:
    missing = []
    for token in numbers_in(summary):
        if token.lstrip("+") in tokens:
            continue
        decimals = len(token.split(".")[1]) if "." in token else 0
        if not any(round(v, decimals) == float(token) for v in values):
            missing.append(token)
    return missing


def test_summary_answers_the_four_questions_and_judges_h1_to_h4(tmp_path):
    out = run_sweep(tmp_path, ab={"baseline": 0.15, "focal_gamma3": 0.16, "poly": 0.18, "asymmetric": 0.14,
                                  "focal_smoothing": 0.15})
    text = (out / "summary.md").read_text()
    for number, question in enumerate(QUESTIONS, start=1):
        line = next(l for l in text.splitlines() if l.startswith(f"{number}. **{question}**"))
        assert len(line) > len(question) + 20            # an answer follows the question
    assert "largest gain in macro F1 is **poly**'s: Δ = +0.78 pp [95 % CI +0.54, +1.02], p_Holm = 0.0033" in text
    assert "d_z = 4.06, n_pairs = 5" in text
    assert "AB F1 is **poly**'s: Δ = +3.00 pp" in text
    for hyp, arm in (("H1", "focal_gamma3"), ("H2", "poly"), ("H3", "asymmetric"), ("H4", "focal_smoothing")):
        line = next(l for l in text.splitlines() if l.startswith(f"- **{hyp} ({arm}): "))
        assert any(f": {v}.**" in line for v in PRIMARY) and "Secondary prediction" in line
    assert "- **H2 (poly): refuted.**" in text              # CI [+0.54, +1.02] lies below +2.0
    for arm, result in (("focal_gamma3", "failure"), ("poly", "inconclusive"), ("asymmetric", "failure"),
                        ("focal_smoothing", "failure")):
        assert f"- **{arm}: {result}**" in text               # §7 (poly: +0.5 <= Δ <= +1.0, AB up)
    assert "Risco 4" in text and "data augmentation" in text


def test_every_number_in_summary_is_in_a_table_or_paired_tests(tmp_path):
    out = run_sweep(tmp_path, qp=FOUR_LEVELS)
    text = (out / "summary.md").read_text()
    tokens, values = traced_sources(out, default_cfg())
    assert len(numbers_in(text)) > 50
    assert untraced(text, tokens, values) == []
    # the check can fail: a number that is in no table is caught
    assert untraced(text + "\nΔ = +12.345 pp", tokens, values) == ["+12.345"]


def test_nothing_distinguishable_from_zero_says_so_with_seeds_for_power(tmp_path):
    noisy = {"baseline": [58.0, 59.5, 57.0], "focal_gamma3": [58.5, 58.0, 58.9], "poly": [57.0, 60.1, 58.0],
             "asymmetric": [59.0, 58.2, 57.5], "focal_smoothing": [58.8, 59.0, 56.9]}
    out = run_sweep(tmp_path, values=noisy, seeds=[1, 2, 3])
    text = (out / "summary.md").read_text()
    tests = pd.read_csv(out / "paired_tests.csv")
    assert "No arm's Δ macro F1 is distinguishable from zero after Holm over 4 arms" in text
    f1 = tests[(tests["metric"] == "macro_f1") & (tests["arm"] == "poly")].iloc[0]
    assert (f"poly {f1['seeds_for_power']:.0f} ({f1['seeds_for_power_holm']:.0f} after Holm)") in text


def test_next_step_carries_a_successful_arm_forward(tmp_path):
    good = dict(ORACLE, poly=[v + 2.5 for v in ORACLE["baseline"]][:4] + [61.2])
    out = run_sweep(tmp_path, values=good, ab={"poly": 0.25})
    text = (out / "summary.md").read_text()
    assert "- **poly: complete success**" in text
    assert "Carry **poly**" in text and "Risco 4" not in text


# ------------------------------------------------------------------------------ hypotheses
def _row(mean, low, high, p_holm):
    return pd.Series({"mean_diff": mean, "ci_low": low, "ci_high": high, "p_holm": p_holm, "n_pairs": 5,
                      "d_z": 1.0})


@pytest.mark.parametrize("row, expected", [
    (_row(2.0, 1.2, 2.8, 0.01), "supported"),
    (_row(2.0, 0.5, 3.5, 0.20), "not established"),      # in range, not significant
    (_row(0.3, -0.1, 0.7, 0.30), "refuted"),             # CI wholly below 1.5
    (_row(4.0, 3.0, 5.0, 0.001), "refuted"),             # CI wholly above 2.5
    (_row(1.0, 0.5, 1.6, 0.01), "not established"),      # significant but below the range, CI overlaps it
    (_row(2.0, 2.0, 2.0, np.nan), "not assessable"),
])
def test_primary_verdict(row, expected):
    assert hypotheses.primary_verdict(row, 1.5, 2.5) == expected


def test_secondary_checks_read_the_paired_tests():
    rows = [("f1_AB", "a", 3.0), ("f1_SPLIT", "a", 1.0), ("f1_RECT", "a", 0.5), ("f1_AB", "b", 4.0),
            ("macro_recall", "a", 0.2), ("macro_precision", "a", 0.4)]
    tests = pd.DataFrame([{"metric": m, "arm": a, "mean_diff": d, "ci_low": d - 1, "ci_high": d + 1, "p_holm": 0.5,
                           "n_pairs": 5, "d_z": 0.3} for m, a, d in rows])
    checks = {k: fn for k, (_, fn) in hypotheses.SECONDARY_CHECKS.items()}
    assert checks["ab_gain_exceeds_split_and_rect"](tests, "a", ["base", "a", "b"], "base")[0] is True
    assert checks["ab_gains_most"](tests, "a", ["base", "a", "b"], "base")[0] is False      # b's +4.00 is larger
    assert checks["recall_gains_more_than_precision"](tests, "a", ["base", "a", "b"], "base")[0] is False
    assert checks["ece_decreases"](tests, "a", ["base", "a", "b"], "base")[0] is None        # no ECE row


def _config_with(tmp_path, hypothesis: str) -> Path:
    text = (ROOT / "config" / "config.yaml").read_text()
    text = text.replace("hypothesis: {id: H1, predicted_gain_pp: [1.5, 2.5], secondary: ab_gains_most}", hypothesis)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("hypothesis, message", [
    ("hypothesis: {id: H1, predicted_gain_pp: [2.5, 1.5]}", "losses.focal_gamma3.hypothesis.predicted_gain_pp"),
    ("hypothesis: {id: H1, predicted_gain_pp: [1.5, 2.5], secondary: ab_wins}",
     "losses.focal_gamma3.hypothesis.secondary: 'ab_wins' is not a known check"),
    ("hypothesis: {id: H1, predicted_gain_pp: [1.5]}", "losses.focal_gamma3.hypothesis.predicted_gain_pp"),
    ("hypothesis: {predicted_gain_pp: [1.5, 2.5]}", "missing required key 'id'"),
])
def test_config_rejects_a_bad_hypothesis_block(tmp_path, hypothesis, message):
    with pytest.raises(LossAblationError, match=re.escape(message)) as err:
        load_config(_config_with(tmp_path, hypothesis), check_paths=False)
    assert "\n" not in str(err.value)


def test_arms_without_hypothesis_get_only_the_section7_verdict(tmp_path):
    runs = write_sweep(tmp_path / "runs", ORACLE)
    cfg = default_cfg()
    for spec in cfg["losses"].values():
        spec.pop("hypothesis", None)
    agg.aggregate(cfg, runs, tmp_path / "out", make_figures=False)
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "No arm of this config carries a `hypothesis` block." in text and "- **poly: failure**" in text


# ------------------------------------------------------------------------------ trade-offs and QP
def test_tradeoff_table_has_paired_precision_recall_and_ab(tmp_path):
    out = run_sweep(tmp_path)
    tests = pd.read_csv(out / "paired_tests.csv")
    assert {"macro_precision", "macro_recall", "precision_AB", "recall_AB"} <= set(tests["metric"])
    csv = pd.read_csv(out / "tables" / "table4_tradeoffs.csv")
    poly = csv[csv["arm"] == "poly"].iloc[0]
    row = tests[(tests["metric"] == "macro_recall") & (tests["arm"] == "poly")].iloc[0]
    assert poly["macro_recall_mean_diff"] == pytest.approx(row["mean_diff"])
    assert poly["macro_recall_p_holm"] == pytest.approx(row["p_holm"])
    assert "| poly | 5/5 | +0.78 [+0.54, +1.02]† | 0.0033 |" in (out / "tables" / "table4_tradeoffs.md").read_text()


def test_qp_table_and_figure_on_four_cq_levels(tmp_path):
    out = run_sweep(tmp_path, qp=FOUR_LEVELS, figures=True)
    csv = pd.read_csv(out / "tables" / "table5_qp.csv")
    assert sorted(csv["qp"].unique()) == [16, 28, 40, 52]
    assert len(csv) == 4 * len(ORACLE) and set(csv["blocks"]) == {75}
    base = csv[csv["arm"] == "baseline"]
    assert base["macro_f1_mean_diff"].isna().all() and csv.loc[csv["arm"] == "poly", "macro_f1_p_holm"].notna().any()
    for suffix in ("md", "tex", "html"):
        assert "Performance by QP level" in (out / "tables" / f"table5_qp.{suffix}").read_text()
    assert (out / "figures" / "fig7_qp.png").stat().st_size > 10_000
    assert "(16, 28, 40, 52)" in (out / "summary.md").read_text()


def test_qp_per_level_scores_are_the_trainer_metrics_on_those_blocks(tmp_path):
    from lossablation.analysis.runs import read_run
    from lossablation.train.metrics import classification_metrics

    write_sweep(tmp_path / "runs", {"baseline": [58.0]}, seeds=[1], qp=FOUR_LEVELS)
    run = read_run(tmp_path / "runs", "baseline", 1)
    probs, labels = run.predictions
    at = FOUR_LEVELS == 40
    expected = classification_metrics(labels[at], probs[at])
    row = run.qp_scores[run.qp_scores["qp"] == 40].iloc[0]
    assert row["macro_f1"] == pytest.approx(100 * expected["macro_f1"])
    assert row["f1_AB"] == pytest.approx(100 * expected["per_class"]["AB"]["f1"])


@pytest.mark.parametrize("qp, reason", [
    (np.full(300, 80), "every test block has the same QP level (80)"),
    (np.full(300, -1), "the dataset carries no QP level per block"),
    (None, "carry no test_qp"),
])
def test_qp_table_skipped_with_a_note(tmp_path, qp, reason):
    out = run_sweep(tmp_path, qp=qp, figures=True)
    for suffix in ("md", "csv", "tex", "html"):
        assert (out / "tables" / f"table5_qp.{suffix}").is_file()
    assert reason in (out / "tables" / "table5_qp.md").read_text()
    assert reason in (out / "summary.md").read_text()
    assert (out / "figures" / "fig7_qp.png").is_file()


def test_a_damaged_test_qp_is_one_line_naming_the_file(tmp_path):
    runs = write_sweep(tmp_path / "runs", ORACLE, qp=np.full(299, 16))
    with pytest.raises(LossAblationError, match=r"predictions\.npz: test_qp \(299,\)"):
        agg.aggregate(default_cfg(), runs, tmp_path / "out", make_figures=False)
    assert not (tmp_path / "out").exists()


def test_splits_carry_the_demo_cq_levels():
    from lossablation.data.splits import make_splits
    from lossablation.train.features import stage2_blocks

    cfg = load_config(ROOT / "config" / "config.yaml")
    splits = make_splits(cfg)
    assert sorted(np.unique(splits.test.qp)) == [16, 28, 40, 52]
    qp = stage2_blocks(splits.test, cfg["classes"])[2].numpy()
    assert qp.shape[0] < splits.test.qp.shape[0] and set(np.unique(qp)) <= {16, 28, 40, 52}


def test_real_training_writes_test_qp_and_aggregation_breaks_it_down(tiny_npz, tmp_path):
    """The real trainer on a cut of the demo (four cq levels): predictions.npz carries val_qp / test_qp, one
    per Stage-2 block in the order of the split, and the aggregation's per-QP scores use them."""
    import torch

    from conftest import tiny_sweep_config
    from lossablation.analysis.runs import read_run
    from lossablation.data.splits import make_splits
    from lossablation.model.networks import Stage1Model, stage1_checkpoint_dict
    from lossablation.train.features import stage2_blocks
    from lossablation.train.stage2 import train_stage2

    cfg = load_config(tiny_sweep_config(tiny_npz, tmp_path / "results", arms=("baseline",), seeds=(1,),
                                        max_epochs=1), check_paths=False)
    torch.manual_seed(0)
    ckpt = tmp_path / "stage1.pt"
    torch.save(stage1_checkpoint_dict(Stage1Model(), epoch=1, best_f1=0.5), ckpt)
    splits = make_splits(cfg)
    train_stage2(cfg, "baseline", 1, ckpt, tmp_path / "runs" / "baseline" / "seed1", splits=splits)
    with np.load(tmp_path / "runs" / "baseline" / "seed1" / "predictions.npz") as z:
        for side in ("val", "test"):
            assert np.array_equal(z[f"{side}_qp"], stage2_blocks(getattr(splits, side), cfg["classes"])[2].numpy())
            assert z[f"{side}_qp"].shape == z[f"{side}_labels"].shape
    run = read_run(tmp_path / "runs", "baseline", 1)
    assert len(run.qp_scores) >= 2 and set(run.qp_scores["qp"]) <= {16, 28, 40, 52}


def test_summary_is_the_first_category_of_the_html_report():
    """Snakemake 9's report menu lists categories sorted by name (localeCompare): summary.md's comes first."""
    rules = "".join((ROOT / "workflow" / "rules" / name).read_text() for name in ("aggregate.smk", "report.smk"))
    categories = set(re.findall(r'category="([^"]+)"', rules)) | set(re.findall(r'reported\([^,]+, "([^"]+)"', rules))
    assert re.search(r'summary=report\(f"\{R\}/summary\.md", caption="[^"]+", category="Answers"\)', rules)
    assert {"Tables", "Figures", "Data"} <= categories
    assert sorted(categories, key=str.lower)[0] == "Answers"
    assert "summary.md" in agg.output_files(["baseline"])["summary"]
