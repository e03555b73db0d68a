"""lossablation.analysis.tables: formatting, LaTeX escaping, bold best cells, booktabs output."""

import pandas as pd

from lossablation.analysis import tables


def small_table() -> tables.Table:
    cells = pd.DataFrame([["baseline (baseline)", "58.42 ± 0.31", "—"],
                          ["focal_gamma3", "59.10 ± 0.20", "+0.68 [+0.30, +1.06]†"]],
                         columns=["Arm", "Macro F1 (%)", "Δ (pp) [95 % CI]"])
    return tables.Table("t", "Table X. Demo", "Paired t-test; p_Holm < 0.05 marked †.", cells,
                        pd.DataFrame({"arm": ["baseline", "focal_gamma3"], "mean": [58.42, 59.1]}),
                        {"Macro F1 (%)": ["focal_gamma3"], "Δ (pp) [95 % CI]": ["focal_gamma3"]},
                        ["Fewer than 8 paired seeds."])


def test_formatters():
    assert tables.fmt_mean_sd(58.4249, 0.3051) == "58.42 ± 0.31"
    assert tables.fmt_mean_sd(58.4249, float("nan")) == "58.42"
    assert tables.fmt_p(0.00004) == "<0.0001" and tables.fmt_p(0.2803556) == "0.2804"
    row = {"mean_diff": 0.78, "ci_low": 0.5412, "ci_high": 1.0188, "p_holm": 0.0033}
    assert tables.fmt_delta_ci(row) == "+0.78 [+0.54, +1.02]†"
    assert tables.fmt_delta_ci({**row, "p_holm": 0.06}) == "+0.78 [+0.54, +1.02]"
    assert tables.fmt_delta_ci({**row, "ci_low": float("nan"), "ci_high": float("nan"),
                                "p_holm": float("nan")}) == "+0.78"


def test_latex_escape():
    assert tables.latex_escape("focal_gamma3 & 95 % ± †") == r"focal\_gamma3 \& 95 \% $\pm$ $^{\dagger}$"
    assert tables.latex_escape("Δ <0.0001") == r"$\Delta$ $<$0.0001"


def test_markdown_bold_and_notes():
    md = tables.to_markdown(small_table())
    assert "| focal_gamma3 | **59.10 ± 0.20** | **+0.68 [+0.30, +1.06]†** |" in md
    assert "| baseline (baseline) | 58.42 ± 0.31 | — |" in md
    assert md.splitlines()[0].startswith("**Table X. Demo.** Paired t-test")
    assert "Note: Fewer than 8 paired seeds." in md


def test_latex_booktabs_bold_caption():
    tex = tables.to_latex(small_table())
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"focal\_gamma3 & \textbf{59.10 $\pm$ 0.20} & \textbf{+0.68 [+0.30, +1.06]$^{\dagger}$} \\" in tex
    assert r"\caption{Table X. Demo. Paired t-test; p\_Holm $<$ 0.05 marked $^{\dagger}$. Note: Fewer" in tex
    assert r"\label{tab:t}" in tex


def test_write_table_writes_every_format(tmp_path):
    paths = tables.write_table(small_table(), tmp_path)
    assert sorted(p.name for p in paths) == ["t.csv", "t.html", "t.md", "t.tex"]
    assert pd.read_csv(tmp_path / "t.csv")["mean"].tolist() == [58.42, 59.1]
    assert "font-weight: bold" in (tmp_path / "t.html").read_text()
