"""User-facing errors: one line that names the file or config key at fault."""


class LossAblationError(Exception):
    """A problem with the user's input (config, dataset, checkpoint, folder).

    The message is one line and starts with the culprit, e.g. ``"config: seeds: duplicate seed 3"``
    or ``"data/train.pt: key 'samples': expected shape (N, 1, 16, 16), got (10, 16, 16)"``.
    The CLI prints it without a traceback and exits with status 2.
    """

    exit_code = 2
