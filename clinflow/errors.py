"""User-facing errors: one clear line, no stack trace."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """An error the user can fix (bad input, missing secret, wrong flag).

    The message must name the file/record involved and say what to do. Entry
    points print it as a single ``error: ...`` line and exit with status 2.
    """


def run_cli(main_fn: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Runs a ``main`` function, turning a UserError into one line on stderr.

    Args:
        main_fn: The entry point; returns a process exit status.
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        The exit status: ``main_fn``'s own, or 2 after a UserError.
    """
    try:
        return main_fn(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
