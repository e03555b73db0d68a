"""The documented import path for scripts: ``lossablation.losses.make_loss`` and friends live in
:mod:`lossablation.train.losses`."""

from lossablation.train.losses import (  # noqa: F401
    LOSS_FUNCTIONS,
    ClassWeightedLoss,
    class_balanced_weights,
    make_loss,
)
