"""Loss-function ablations of AV1 partition classifiers (SPLIT / RECT / AB on 16x16 luma blocks)."""

__version__ = "1.0.0"
