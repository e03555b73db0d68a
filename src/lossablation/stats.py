"""The documented import path for scripts: ``lossablation.stats.paired_comparison`` lives in
:mod:`lossablation.analysis.stats`."""

from lossablation.analysis.stats import paired_comparison  # noqa: F401
