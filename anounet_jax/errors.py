"""The one exception type for problems a user can cause (bad file, wrong shape, missing folder)."""

from __future__ import annotations


class AnoUnetError(Exception):
    """A user-facing error: the message names the file (if any) and the problem.

    The CLI prints it without a traceback and exits non-zero.
    """

    def __init__(self, problem: str, path: object | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
