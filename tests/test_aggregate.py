"""End to end: synthetic run folders (docs/design.md) -> runs.csv, tables, figures, verdicts."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_runs import ORACLE, SEEDS, cfg_for, write_run, write_sweep  # noqa: E402

from lossablation.analysis import aggregate as agg  # noqa: E402
from lossablation.errors import LossAblationError  # noqa: E402

ARMS = list(ORACLE)


def md_row(md: str, arm_label: str) -> list[str]:
    line = next(l for l in md.splitlines() if l.startswith(f"| {arm_label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def tex_row(tex: str, arm_label: str) -> list[str]:
    line = next(l for l in tex.splitlines() if l.startswith(arm_label.replace("_", r"\_") + " &"))
    return [c.strip() for c in line.rstrip("\\ ").split(" & ")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Oracle values; asymmetric seed 2 missing (failed job), poly seed 5 diverged before any finite epoch."""
    root = tmp_path_factory.mktemp("sweep")
    write_sweep(root / "runs", ORACLE, skip={("asymmetric", 2)}, diverged={("poly", 5)})
    start = time.perf_counter()
    result = agg.aggregate(cfg_for(ARMS, SEEDS), root / "runs", root / "out")
    return root / "out", result, time.perf_counter() - start


def expected_f1(arm: str, drop: set[int]) -> dict:
    """Independent recomputation with scipy from the fixture's numbers (stored as fractions, shown in %)."""
    keep = [i for i, s in enumerate(SEEDS) if s not in drop]
    x = (np.array(ORACLE[arm]) / 100.0 * 100.0)[keep]
    y = (np.array(ORACLE["baseline"]) / 100.0 * 100.0)[keep]
    all_x = x
    res = sps.ttest_rel(x, y)
    ci = res.confidence_interval()
    return {"mean": all_x.mean(), "sd": all_x.std(ddof=1), "delta": (x - y).mean(), "lo": ci.low, "hi": ci.high,
            "p": res.pvalue, "dz": (x - y).mean() / (x - y).std(ddof=1), "n": len(keep)}


def test_every_declared_output_exists(sweep):
    out, _, _ = sweep
    for files in agg.output_files(ARMS).values():
        for f in files:
            assert (out / f).is_file() and (out / f).stat().st_size > 0, f


def test_runs_csv_is_tidy_and_lists_missing_and_diverged(sweep):
    out, _, _ = sweep
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False, na_values=[""])
    assert list(runs.columns) == ["arm", "seed", "split", "status", "metric", "value"]
    missing = runs[(runs.arm == "asymmetric") & (runs.seed == 2)]
    assert missing["status"].tolist() == ["missing"] and missing["value"].isna().all()
    assert runs[(runs.arm == "poly") & (runs.seed == 5)]["status"].tolist() == ["diverged"]
    f1 = runs[(runs.arm == "focal_gamma3") & (runs.seed == 3) & (runs.split == "test") & (runs.metric == "macro_f1")]
    assert f1["value"].item() == pytest.approx(0.586)
    assert {"f1_AB", "confusion_AB_RECT", "ece"} <= set(runs["metric"])


@pytest.mark.parametrize("arm,drop", [("focal_gamma3", set()), ("poly", {5}), ("asymmetric", {2}),
                                      ("focal_smoothing", set())])
def test_table1_numbers_equal_independent_computation(sweep, arm, drop):
    out, _, _ = sweep
    e = expected_f1(arm, drop)
    md = (out / "tables/table1_overall.md").read_text()
    tex = (out / "tables/table1_overall.tex").read_text()
    row = md_row(md, arm)
    mean_sd = f"{e['mean']:.2f} ± {e['sd']:.2f}"
    delta = f"{e['delta']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]"
    assert row[1] == f"{5 - len(drop)}/5"
    assert row[2].strip("*") == mean_sd
    assert row[3].strip("*").rstrip("†") == delta
    assert row[4] == f"{e['p']:.4f}"
    assert row[6] == f"{e['dz']:.2f}"
    assert row[-1] == str(e["n"])          # a missing or diverged run lowers n_pairs
    trow = tex_row(tex, arm)
    assert trow[2].replace(r"\textbf{", "").rstrip("}") == mean_sd.replace("±", r"$\pm$")
    assert delta in trow[3] and trow[4] == f"{e['p']:.4f}" and trow[-1] == str(e["n"])
    csv = pd.read_csv(out / "tables/table1_overall.csv").set_index("arm")
    assert csv.loc[arm, "mean_diff"] == pytest.approx(e["delta"], abs=1e-9)
    assert csv.loc[arm, "p"] == pytest.approx(e["p"], abs=1e-9)
    assert csv.loc[arm, "n_pairs"] == e["n"]


def test_holm_column_and_significance_mark(sweep):
    out, result, _ = sweep
    tests = result["tests"]
    f1 = tests[tests.metric == "macro_f1"].set_index("arm")
    p = f1["p"].to_numpy()
    order = np.argsort(p)
    holm = np.minimum(1, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    expected = np.empty_like(holm)
    expected[order] = holm
    np.testing.assert_allclose(f1["p_holm"], expected, atol=1e-12)
    md = (out / "tables/table1_overall.md").read_text()
    for arm in f1.index:
        row = md_row(md, arm)
        assert row[5] == f"{f1.loc[arm, 'p_holm']:.4f}"
        assert row[3].strip("*").endswith("†") == (f1.loc[arm, "p_holm"] < 0.05)


def test_best_cell_is_bold(sweep):
    out, _, _ = sweep
    md = (out / "tables/table1_overall.md").read_text()
    tex = (out / "tables/table1_overall.tex").read_text()
    assert md_row(md, "poly")[2].startswith("**") and not md_row(md, "focal_smoothing")[2].startswith("**")
    assert md_row(md, "poly")[3].startswith("**")
    assert tex_row(tex, "poly")[2].startswith(r"\textbf{")
    assert not tex_row(tex, "baseline (baseline)")[2].startswith(r"\textbf{")
    cal = (out / "tables/table3_calibration.md").read_text()   # ECE: lower is better -> asymmetric (lowest F1)
    assert md_row(cal, "asymmetric")[2].startswith("**")
    assert "Holm" in tex and "paired t-test" in tex and r"\toprule" in tex


def test_excluded_runs_are_marked(sweep):
    out, result, _ = sweep
    for stem in agg.TABLE_STEMS:
        md = (out / f"tables/{stem}.md").read_text()
        assert "poly seed 5 (diverged)" in md and "asymmetric seed 2 (missing)" in md
    assert "Fewer than 8 paired seeds" in (out / "verdicts.md").read_text()
    assert "diverged seed(s): 5" in (out / "verdicts.md").read_text()
    per_class = (out / "tables/table2_per_class.md").read_text()
    assert md_row(per_class, "poly")[-1] == "4"


def test_figures_are_fast(sweep):
    out, _, seconds = sweep
    assert seconds < 15, f"aggregation with figures took {seconds:.1f} s"
    assert (out / "figures/fig3_confusion_poly.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "figures/fig4_reliability.pdf").read_bytes()[:4] == b"%PDF"


def test_stderr_warnings(tmp_path, capsys):
    write_sweep(tmp_path / "runs", ORACLE)
    agg.aggregate(cfg_for(ARMS, SEEDS), tmp_path / "runs", tmp_path / "out", make_figures=False)
    err = capsys.readouterr().err
    assert "Fewer than 8 paired seeds (min n_pairs = 5)" in err and "Excluded" not in err


def _verdict_sweep(tmp_path, values, ab, seeds=SEEDS, **kw):
    write_sweep(tmp_path / "runs", values, seeds=seeds, ab=ab, **kw)
    agg.aggregate(cfg_for(list(values), seeds), tmp_path / "runs", tmp_path / "out", make_figures=False)
    return (tmp_path / "out/verdicts.md").read_text()


def test_verdicts_follow_the_plan_criteria(tmp_path):
    base = ORACLE["baseline"]
    values = {"baseline": base,
              "complete": [b + 2.5 + 0.1 * i for i, b in enumerate(base)],
              "partial": [b + 1.5 + 0.1 * i for i, b in enumerate(base)],
              "nogain": [b + 0.2 + 0.1 * i for i, b in enumerate(base)],
              "middle": [b + 0.7 + 0.1 * i for i, b in enumerate(base)],
              "wobbly": [b + 3.0 * (-1) ** i + 1.5 for i, b in enumerate(base)]}
    ab = {"baseline": 0.15, "complete": 0.25, "partial": 0.17, "nogain": 0.2, "middle": 0.18, "wobbly": 0.3}
    text = _verdict_sweep(tmp_path, values, ab)
    line = {l.split(":")[0].strip("- *"): l for l in text.splitlines() if l.startswith("- **")}
    assert "**complete: complete success**" in line["complete"] and "Δ macro F1 = +2.70 pp" in line["complete"]
    assert "AB F1 = 25.30 %" in line["complete"]
    assert "**partial: partial success**" in line["partial"]
    assert "**nogain: failure**" in line["nogain"] and "Δ < +0.5 pp" in line["nogain"]
    assert "**middle: inconclusive**" in line["middle"]
    assert "**wobbly: failure**" in line["wobbly"] and "unstable" in line["wobbly"]
    assert "2 × baseline's" in line["wobbly"]
    for arm_line in line.values():
        assert "after Holm" in arm_line and "p_Holm = " in arm_line


def test_ab_not_up_is_failure(tmp_path):
    values = {"baseline": ORACLE["baseline"], "x": [b + 2.5 + 0.1 * i for i, b in enumerate(ORACLE["baseline"])]}
    text = _verdict_sweep(tmp_path, values, {"baseline": 0.25, "x": 0.21})
    assert "**x: failure**" in text and "AB F1 did not go up" in text


def test_one_seed_is_descriptive_only(tmp_path):
    values = {a: v[:1] for a, v in ORACLE.items()}
    text = _verdict_sweep(tmp_path, values, {}, seeds=[1])
    assert "no paired t-test (fewer than 2 pairs)" in text
    md = (tmp_path / "out/tables/table1_overall.md").read_text()
    assert "no paired test was run (a paired t-test needs at least 2 pairs)" in md
    row = md_row(md, "poly")
    assert row[2].strip("*") == "59.00" and row[3].strip("*") == "+0.80" and row[4] == row[5] == "—" and row[-1] == "1"
    assert "†" not in md.split("\n\n")[1]       # nothing marked significant in the table body


def test_block_level_split_note(tmp_path):
    text = _verdict_sweep(tmp_path, ORACLE, {}, block_level=True)
    assert "block-level split" in text
    assert "block-level split" in (tmp_path / "out/tables/table2_per_class.md").read_text()


def test_no_runs_at_all_still_writes_every_output(tmp_path):
    (tmp_path / "runs").mkdir()
    agg.aggregate(cfg_for(ARMS, [1, 2]), tmp_path / "runs", tmp_path / "out")
    for files in agg.output_files(ARMS).values():
        for f in files:
            assert (tmp_path / "out" / f).is_file(), f
    assert "not assessable" in (tmp_path / "out/verdicts.md").read_text()


def test_malformed_metrics_json_names_the_file(tmp_path):
    folder = write_run(tmp_path / "runs", "baseline", 1, 0.58)
    (folder / "metrics.json").write_text("{not json")
    with pytest.raises(LossAblationError, match=r"baseline/seed1/metrics.json: not valid JSON"):
        agg.aggregate(cfg_for(["baseline", "poly"], [1]), tmp_path / "runs", tmp_path / "out", make_figures=False)
    data = {"arm": "poly", "seed": 1, "status": "exploded"}
    (folder / "metrics.json").write_text(json.dumps(data))
    with pytest.raises(LossAblationError, match="status"):
        agg.read_run(tmp_path / "runs", "baseline", 1)


def test_reliability_bins_reproduce_reference_ece():
    from lossablation.train.metrics import reliability_bins
    p = np.array([[.91, .06, .03], [.82, .10, .08], [.20, .74, .06], [.15, .63, .22], [.40, .45, .15],
                  [.05, .12, .83], [.33, .31, .36], [.58, .21, .21], [.10, .86, .04], [.48, .44, .08],
                  [.07, .25, .68], [.97, .02, .01]])
    y = np.array([0, 1, 1, 2, 1, 2, 0, 0, 1, 1, 2, 0])
    for bins, ece, mce in [(15, 73 / 240, 0.63), (10, 41 / 240, 0.42)]:
        b = reliability_bins(p, y, bins)
        full = b[b["count"] > 0]
        gaps = (full["accuracy"] - full["confidence"]).abs()
        assert (full["count"] / len(y) * gaps).sum() == pytest.approx(ece, abs=1e-7)
        assert gaps.max() == pytest.approx(mce, abs=1e-9)


def test_aggregate_main_with_a_config_file(tmp_path):
    from lossablation.commands_aggregate import aggregate_main
    write_sweep(tmp_path / "runs", {a: ORACLE[a][:3] for a in ARMS}, seeds=[1, 2, 3])
    cfg = yaml.safe_load(open(Path(__file__).parents[1] / "config/config.yaml"))
    cfg["dataset"] = str(tmp_path / "absent.npz")      # aggregation never reads the dataset
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert aggregate_main(tmp_path / "c.yaml", tmp_path / "runs", tmp_path / "out") == 0
    assert (tmp_path / "out/tables/table1_overall.tex").is_file()
