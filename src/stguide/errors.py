"""One error family for bad input: every message names the file, the problem and the fix.

The CLI prints :class:`InputError` without a traceback; everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import warnings
from os import PathLike


class InputError(ValueError):
    """Bad user input.

    Parameters
    ----------
    file
        The file or folder at fault (or a config key, written as ``config:KEY``).
    problem
        What is wrong, in one sentence.
    fix
        What the user should do about it.
    """

    def __init__(self, file: str | PathLike | None, problem: str, fix: str) -> None:
        self.file = str(file) if file is not None else "<input>"
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.file}: {problem}\n  fix: {fix}")


class LeakageError(RuntimeError):
    """A fit would see a held-out patient: the fold is refused (the CLI prints the message, no traceback)."""


class DataWarning(UserWarning):
    """Something in the input was not used as-is (for example a label row matching no spot).

    Raised as a warning so that it is shown to the user; the same facts are recorded in the dataset's ``uns``.
    """


def warn_data(file: str | PathLike, message: str) -> None:
    """Show a :class:`DataWarning` that names ``file``."""
    warnings.warn(f"{file}: {message}", DataWarning, stacklevel=3)
