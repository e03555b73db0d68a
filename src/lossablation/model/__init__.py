"""The v7 networks (backbone, adapters, heads), their checkpoints, and the exact fast path of the frozen backbone."""
