"""Datasets of 16x16 luma blocks with AV1 partition labels, and making one with libaom.

Reading and splitting (what every training job uses):

* :mod:`~lossablation.data.blocks` — :class:`BlockSet`; v7 and npz readers (validating), the npz writer;
* :mod:`~lossablation.data.targets` — Stage-1 / Stage-2 targets from partition ids (the ``classes`` groups);
* :mod:`~lossablation.data.splits` — the sweep's train / val / test split and its audit files;
* :mod:`~lossablation.data.grouping` — the search that assigns whole sources to the sides;
* :mod:`~lossablation.data.describe` — ``describe-data``'s counts and table.

Making a dataset (``make-dataset``): :mod:`~lossablation.data.make_dataset` runs the pipeline over
:mod:`~lossablation.data.clips` (inputs as luma frames), :mod:`~lossablation.data.aomtools` (aomenc and libaom's
``inspect``, installed / built once) and :mod:`~lossablation.data.av1labels` (labels from the block-size map).
"""
