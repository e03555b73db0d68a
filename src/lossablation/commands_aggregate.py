"""`lossablation aggregate --config FILE --runs DIR --out DIR`: statistics, tables, figures, verdicts."""

from __future__ import annotations

import os


def aggregate_main(config_path: str | os.PathLike, runs_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   make_figures: bool = True) -> int:
    """Aggregate every run folder of the sweep in ``config_path``; missing or diverged runs are tolerated."""
    from lossablation.analysis.aggregate import aggregate
    from lossablation.config import load_config

    cfg = load_config(config_path, check_paths=False)  # the dataset is not read here
    aggregate(cfg, runs_dir, out_dir, make_figures=make_figures)
    return 0


def figures_main(config_path: str | os.PathLike, runs_dir: str | os.PathLike, out_dir: str | os.PathLike) -> int:
    """Only the figures (the workflow draws them in their own rule, after the tables)."""
    from lossablation.analysis.aggregate import draw_sweep_figures
    from lossablation.config import load_config

    draw_sweep_figures(load_config(config_path, check_paths=False), runs_dir, out_dir)
    return 0
