"""Training, one idea per module (read in this order):

- ``stage2`` / ``stage1``: a run of each stage as four steps, build -> fit -> evaluate -> write;
- ``loop``: the epoch loop both stages share (selection, early stopping, divergence, resume);
- ``state``: the resume file ``state.pt`` (tensors and plain data only; what is not ours is refused);
- ``environment``: device, determinism, threads, seeding, RNG state capture and restore;
- ``evaluation``: predicting a split and its metrics, the same for both stages;
- ``provenance``: the provenance block of metrics.json;
- ``steps``: optimizer steps over resident data (eager or CUDA graphs);
- ``losses``: the ablation's losses, class-balanced weights, ``train.rebalance``; ``metrics``: METRICS of a split.
"""
