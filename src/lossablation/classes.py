"""The class vocabulary, defined once: AV1 partition ids and the Stage-1 / Stage-2 classes built from them.

Stage-2 class indices are fixed (SPLIT 0, RECT 1, AB 2): every tensor of labels, every confusion matrix and every
table column uses this order. Which AV1 partitions make up each Stage-2 class is configurable (``classes:`` in the
config, default in the schema); the names and their order are not.
"""

# AV1 partition types in libaom's numbering (PARTITION_NONE = 0 ... PARTITION_VERT_4 = 9).
PARTITION_NAMES: tuple[str, ...] = ("NONE", "HORZ", "VERT", "SPLIT", "HORZ_A", "HORZ_B", "VERT_A", "VERT_B",
                                    "HORZ_4", "VERT_4")
STAGE1_CLASSES: tuple[str, ...] = ("NONE", "PARTITIONED")
STAGE2_CLASSES: tuple[str, ...] = ("SPLIT", "RECT", "AB")
N_STAGE2_CLASSES = len(STAGE2_CLASSES)
