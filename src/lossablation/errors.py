"""User-facing errors: one line that names the file or config key at fault, printable as it is."""


class LossAblationError(Exception):
    """A problem with the user's input (config, dataset, checkpoint, folder).

    The message is one line and starts with the culprit, e.g. ``"config.yaml: seeds: duplicate value 3"``
    or ``"data/train.pt: key 'samples': expected shape (N, 1, 16, 16), got (10, 16, 16)"``.
    The CLI prints it without a traceback and exits with status 2.
    """

    exit_code = 2


def safe_text(value: object) -> str:
    """``str(value)`` with every non-printable character escaped as Python's ``repr`` writes it.

    A key, value or file name copied from a file can carry terminal escape sequences (ESC ``\\x1b``), newlines
    or bidirectional overrides; printed raw they would recolour the terminal, forge extra lines or reorder the
    text. Printable characters, the space and backslashes are kept, so applying it twice changes nothing.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
