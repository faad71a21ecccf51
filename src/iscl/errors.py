"""User-facing errors.

Every error that the command line shows to a user derives from :class:`IsclError`. Its ``str()`` is
exactly one line, ``"<path>: <problem>"``, so the CLI can print it as-is (no traceback) and the user
sees which file is at fault and why, e.g. ``noisy/a.tif: truncated TIFF (cannot read page 0: ...)``.
"""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["IsclError", "ImageReadError", "ImageWriteError"]


def _one_line(text: str) -> str:
    # Messages often embed text from third-party exceptions (tifffile, pydicom) that may span lines;
    # the CLI contract is one line per error.
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


class IsclError(Exception):
    """Base class for errors meant to be shown to a user.

    Parameters
    ----------
    path_or_message : str or os.PathLike or None
        The file (or directory / pattern) the problem is about. When ``problem`` is omitted it is
        taken as the complete message instead, and ``path`` is ``None``; this keeps the class
        constructible from a single string, as pickling and some re-raising helpers expect.
    problem : str, optional
        What is wrong, in words a user can act on.

    Attributes
    ----------
    path : str or os.PathLike or None
        The offending path, as the caller gave it.
    problem : str
        The problem without the path.
    """

    def __init__(self, path_or_message: Any, problem: str | None = None) -> None:
        if problem is None:
            self.path = None
            self.problem = _one_line(str(path_or_message))
            message = self.problem
        else:
            self.path = path_or_message
            self.problem = _one_line(problem)
            message = f"{os.fspath(path_or_message)}: {self.problem}"
        self.message = _one_line(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions crossing process boundaries (DataLoader workers) are pickled; rebuild with the
        # same (path, problem) pair rather than the formatted message.
        args = (self.problem,) if self.path is None else (self.path, self.problem)
        return (type(self), args, {"errno": getattr(self, "errno", None)})


class ImageReadError(IsclError, ValueError):
    """An input image is missing, unreadable, corrupt, or has content this package cannot use."""


class ImageWriteError(IsclError, OSError):
    """An output image could not be written; no partial file is left under its name.

    ``errno`` is set when the cause was an OS error (e.g. ``errno.ENOSPC`` for a full disk).
    """

    def __init__(self, path_or_message: Any, problem: str | None = None, *, errno: int | None = None):
        super().__init__(path_or_message, problem)
        self.errno = errno
