"""End to end: synthetic run folders (docs/design.md) -> runs.csv, tables, figures, verdicts."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_runs import ORACLE, SEEDS, cfg_for, write_run, write_sweep  # noqa: E402

from lossablation.analysis import aggregate as agg  # noqa: E402
from lossablation.analysis.runs import read_run  # noqa: E402
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
              "wobbly": [b + 3.0 * (-1) ** i + 1.5 for i, b in enumerate(base)],
              "diverging": [b + 1.5 + 0.1 * i for i, b in enumerate(base)],
              "nanloss": [b + 1.5 + 0.1 * i for i, b in enumerate(base)]}
    ab = {"baseline": 0.15, "complete": 0.25, "partial": 0.17, "nogain": 0.2, "middle": 0.18, "wobbly": 0.3,
          "diverging": 0.17, "nanloss": 0.17}
    text = _verdict_sweep(tmp_path, values, ab, diverged={("diverging", 5)}, nan_loss={("nanloss", 3)})
    line = {l.split(":")[0].strip("- *"): l for l in text.splitlines() if l.startswith("- **")}
    assert "**complete: complete success**" in line["complete"] and "Δ macro F1 = +2.70 pp" in line["complete"]
    assert "AB F1 = 25.30 %" in line["complete"]
    assert "**partial: partial success**" in line["partial"]
    assert "**nogain: failure**" in line["nogain"] and "Δ < +0.5 pp" in line["nogain"]
    assert "**middle: inconclusive**" in line["middle"]
    # plan §7.3: unstable = a diverged seed or a non-finite loss; a large sd over seeds is information only
    assert "**diverging: failure**" in line["diverging"] and "unstable; diverged seed(s): 5" in line["diverging"]
    assert "**nanloss: failure**" in line["nanloss"] and "unstable" in line["nanloss"]
    assert "non-finite loss in seed 3: history.csv train_loss (epoch 2)" in line["nanloss"]
    assert "**wobbly: complete success**" in line["wobbly"] and "unstable" not in line["wobbly"]
    assert "× the baseline's" in line["wobbly"] and "(information, not a criterion)" in line["wobbly"]
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


def test_no_runs_at_all_is_an_error_naming_the_folder(tmp_path):
    # issue 13 item 5 (replaces "no runs at all still writes every output"): a runs folder holding no run of
    # the config is a mistyped --runs, not a report of 10 missing runs
    (tmp_path / "runs").mkdir()
    with pytest.raises(LossAblationError, match=r"runs: no run of this config"):
        agg.aggregate(cfg_for(ARMS, [1, 2]), tmp_path / "runs", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(LossAblationError, match=r"nope: runs folder does not exist"):
        agg.aggregate(cfg_for(ARMS, [1, 2]), tmp_path / "nope", tmp_path / "out")


def test_a_single_run_is_enough_and_every_output_exists(tmp_path):
    write_run(tmp_path / "runs", "poly", 2, 0.59)
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
        read_run(tmp_path / "runs", "baseline", 1)


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
    from lossablation.commands import aggregate as aggregate_main
    write_sweep(tmp_path / "runs", {a: ORACLE[a][:3] for a in ARMS}, seeds=[1, 2, 3])
    cfg = yaml.safe_load(open(Path(__file__).parents[1] / "config/config.yaml"))
    cfg["dataset"] = str(tmp_path / "absent.npz")      # aggregation never reads the dataset
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert aggregate_main(tmp_path / "c.yaml", tmp_path / "runs", tmp_path / "out") == 0
    assert (tmp_path / "out/tables/table1_overall.tex").is_file()


# ------------------------------------------------------------------------------- damaged inputs (issue 13 item 5)
DAMAGED_RUN = "poly/seed2"


@pytest.fixture(scope="module")
def cli_config(tmp_path_factory) -> Path:
    """config/config.yaml (arms as ORACLE, seeds 1..3) with a dataset path aggregation never reads."""
    cfg = yaml.safe_load(open(Path(__file__).parents[1] / "config/config.yaml"))
    cfg["dataset"] = "absent.npz"
    path = tmp_path_factory.mktemp("cli") / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_metrics(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


DAMAGE = {  # case -> (damage the run folder, text the one-line error must contain)
    "truncated predictions.npz": (lambda f: _truncate(f / "predictions.npz"),
                                  f"{DAMAGED_RUN}/predictions.npz: unreadable or truncated"),
    "truncated history.csv": (lambda f: _truncate(f / "history.csv", 0.8), f"{DAMAGED_RUN}/history.csv: "),
    "metrics.json not JSON": (lambda f: _truncate(f / "metrics.json"), f"{DAMAGED_RUN}/metrics.json: not valid JSON"),
    "metrics.json not an object": (lambda f: (f / "metrics.json").write_text("[1, 2]"),
                                   f"{DAMAGED_RUN}/metrics.json: expected a JSON object"),
    "metrics.json missing a key": (lambda f: _edit_metrics(f / "metrics.json", lambda d: d["test"].pop("macro_f1")),
                                   f"{DAMAGED_RUN}/metrics.json: test.macro_f1: missing"),
}


def run_aggregate_cli(config: Path, runs: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lossablation.cli", "aggregate", "--config", str(config),
                           "--runs", str(runs), "--out", str(out)], capture_output=True, text=True, timeout=300)


def assert_one_line_error_and_nothing_written(result, expected: str, out: Path, before: dict) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "error: " in lines[0] and expected in lines[0], lines[0]
    now = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert now == before, "the output folder changed"


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_run_file_is_one_line_through_the_cli_and_nothing_is_written(tmp_path, cli_config, case):
    damage, expected = DAMAGE[case]
    runs = write_sweep(tmp_path / "runs", {a: ORACLE[a][:3] for a in ARMS}, seeds=[1, 2, 3])
    damage(runs / DAMAGED_RUN)
    out = tmp_path / "out"
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "table1_overall.md").write_text("an earlier, complete result\n")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert_one_line_error_and_nothing_written(run_aggregate_cli(cli_config, runs, out), expected, out, before)


def test_runs_folder_without_runs_is_one_line_through_the_cli(tmp_path, cli_config):
    (tmp_path / "runs" / "baseline").mkdir(parents=True)        # e.g. a mistyped --runs one level too high
    result = run_aggregate_cli(cli_config, tmp_path / "runs", tmp_path / "out")
    assert_one_line_error_and_nothing_written(result, f"{tmp_path / 'runs'}: no run of this config",
                                              tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def _damaged_sweep(tmp_path: Path, damage) -> Path:
    runs = write_sweep(tmp_path / "runs", {a: ORACLE[a][:3] for a in ARMS}, seeds=[1, 2, 3])
    damage(runs / DAMAGED_RUN)
    return runs


def _three_seed_cfg() -> dict:
    return cfg_for(ARMS, [1, 2, 3])


@pytest.mark.parametrize("damage,expected", [
    (lambda f: (f / "history.csv").write_text("".join((f / "history.csv").read_text().splitlines(True)[:-1])),
     "history.csv: 3 epochs, but metrics.json has epochs_run = 4"),           # cut at a line boundary
    (lambda f: (f / "history.csv").write_text((f / "history.csv").read_text().replace(",0.001,", ",", 1)),
     "history.csv: line 2: 6 fields, the header has 7"),
    (lambda f: (f / "history.csv").write_text((f / "history.csv").read_text().replace(",0.001,", ",x,", 1)
                                               .replace("1,1.0000", "1,oops", 1)),
     "history.csv: line 2: train_loss: not a number"),
    (lambda f: _edit_metrics(f / "metrics.json", lambda d: d["test"].update(accuracy="high")),
     "metrics.json: test.accuracy: expected a number"),
    (lambda f: _edit_metrics(f / "metrics.json", lambda d: d["val"]["per_class"].pop("AB")),
     "metrics.json: val.per_class.AB: expected numbers"),
    (lambda f: _edit_metrics(f / "metrics.json", lambda d: d["test"].update(confusion_matrix=[[1, 0], [0, 1]])),
     "metrics.json: test.confusion_matrix: expected 3x3 numbers"),
    (lambda f: np.savez(f / "predictions.npz", test_labels=np.zeros(300, dtype=int)),
     "predictions.npz: missing array"),
    (lambda f: np.savez(f / "predictions.npz", test_probs=np.full((299, 3), 1 / 3), test_labels=np.zeros(299, int)),
     "predictions.npz: 299 test predictions, but metrics.json has test.n = 300"),
    (lambda f: (f / "predictions.npz").write_bytes(b""), "predictions.npz: unreadable or truncated"),
], ids=["history cut at a line", "history short row", "history not a number", "metric not a number",
        "class missing", "confusion matrix shape", "npz array missing", "npz length", "npz empty"])
def test_damaged_run_files_are_errors_before_any_output(tmp_path, damage, expected):
    runs = _damaged_sweep(tmp_path, damage)
    for make_figures in (False, True):            # the workflow's aggregate rule draws no figures: still checked
        with pytest.raises(LossAblationError, match=re.escape(f"{DAMAGED_RUN}/{expected}")):
            agg.aggregate(_three_seed_cfg(), runs, tmp_path / "out", make_figures=make_figures)
    assert not (tmp_path / "out").exists()


def test_nonfinite_metrics_loss_or_probabilities_mark_the_arm_unstable(tmp_path):
    def damage(folder: Path) -> None:
        _edit_metrics(folder / "metrics.json", lambda d: d["test"].update(loss=float("nan")))
        with np.load(folder / "predictions.npz") as data:
            arrays = dict(data)
        arrays["test_probs"][0] = np.nan
        np.savez(folder / "predictions.npz", **arrays)

    runs = _damaged_sweep(tmp_path, damage)
    agg.aggregate(_three_seed_cfg(), runs, tmp_path / "out")        # figures skip the non-finite predictions
    line = next(l for l in (tmp_path / "out/verdicts.md").read_text().splitlines() if l.startswith("- **poly"))
    assert line.startswith("- **poly: failure** — ")
    assert "; unstable; non-finite loss in seed 2: metrics.json test.loss; predictions.npz test_probs;" in line


# ------------------------------------------------------------------------- Holm family, methods, power columns
def test_paired_tests_csv_carries_method_family_and_both_powers(sweep):
    out, _, _ = sweep
    tests = pd.read_csv(out / "paired_tests.csv", keep_default_na=False, na_values=[""])
    assert {"wilcoxon_method", "sd_diff", "holm_family", "seeds_for_power_holm"} <= set(tests.columns)
    f1 = tests[tests.metric == "macro_f1"].set_index("arm")
    assert (f1["holm_family"] == 4).all() and (f1["wilcoxon_method"] == "exact").all()
    assert (f1["seeds_for_power_holm"] >= f1["seeds_for_power"]).all()
    md = (out / "tables/table1_overall.md").read_text()
    assert "Holm-adjusted over the family of 4 planned arms" in md and "counts with p = 1" in md
    verdicts = (out / "verdicts.md").read_text()
    row = f1.loc["focal_smoothing"]
    assert (f"seeds for 80 % power at +1 pp: {row['seeds_for_power']:.0f} at α = 0.05, "
            f"{row['seeds_for_power_holm']:.0f} at the Holm α = 0.05/4 = 0.0125") in verdicts
    assert "exact Wilcoxon p = " in verdicts and "after Holm over 4 arms" in verdicts


def test_a_planned_arm_without_runs_stays_in_the_holm_family_and_is_named(tmp_path):
    write_sweep(tmp_path / "runs", ORACLE)
    arms = [*ARMS, "ghost"]
    result = agg.aggregate(cfg_for(arms, SEEDS), tmp_path / "runs", tmp_path / "out", make_figures=False)
    f1 = result["tests"][result["tests"].metric == "macro_f1"].set_index("arm")
    p = np.append(f1.loc[ARMS[1:], "p"].to_numpy(), 1.0)         # ghost counts with p = 1
    np.testing.assert_allclose(f1.loc[ARMS[1:], "p_holm"], multipletests(p, method="holm")[1][:-1], atol=1e-12)
    assert np.isnan(f1.loc["ghost", "p_holm"]) and (f1["holm_family"] == 5).all()
    md = (tmp_path / "out/tables/table1_overall.md").read_text()
    assert "family of 5 planned arms" in md
    assert "ghost (no usable run paired with the baseline; every tested metric)" in md
    assert "**ghost: not assessable**" in (tmp_path / "out/verdicts.md").read_text()


def test_an_arm_whose_every_seed_diverged_is_a_failure(tmp_path):
    values = {"baseline": ORACLE["baseline"], "gone": ORACLE["poly"]}
    text = _verdict_sweep(tmp_path, values, {}, diverged={("gone", s) for s in SEEDS})
    assert "**gone: failure** — unstable; diverged seed(s): 1, 2, 3, 4, 5; no usable seed paired" in text


def test_runs_trained_on_cpu_though_a_gpu_was_requested_are_counted_in_the_notes(tmp_path):
    runs = write_sweep(tmp_path / "runs", {"baseline": [58.0, 59.0], "poly": [59.0, 60.5]}, seeds=[1, 2])
    metrics_path = runs / "poly" / "seed2" / "metrics.json"
    data = json.loads(metrics_path.read_text())
    data["provenance"]["gpu_requested_but_cpu_used"] = True
    metrics_path.write_text(json.dumps(data))
    agg.aggregate(cfg_for(["baseline", "poly"], [1, 2]), runs, tmp_path / "out", make_figures=False)
    note = "1 run(s) trained on CPU although a GPU was requested (provenance.gpu_requested_but_cpu_used): poly/seed2."
    assert note in (tmp_path / "out/tables/table1_overall.md").read_text()
