"""User-facing errors: the CLI prints them as they are (no traceback) and exits non-zero."""

from __future__ import annotations


class RlhfkitError(Exception):
    """Something wrong with the user's input or environment, said in one or more lines.

    Raise it for anything the user can fix (a bad file, an unknown parameter, a missing
    backend). Programming errors stay ordinary exceptions with their tracebacks.
    """

    exit_code = 1


class DataError(RlhfkitError):
    """Every problem found in a dataset, one `path:line: message` per entry."""

    def __init__(self, problems: list[str], limit: int = 50):
        self.problems = problems
        shown = problems[:limit]
        more = len(problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more problems" if more > 0 else "")
        super().__init__(text)
