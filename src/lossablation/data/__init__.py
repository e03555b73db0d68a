"""Datasets of 16x16 luma blocks: files, Stage-1/Stage-2 targets, grouped splits, and making a dataset with libaom."""
