"""User-facing errors: one line, exit code 2, no traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

EXIT_BAD_INPUT = 2

F = TypeVar("F", bound=Callable[..., int])


class HarnessError(Exception):
    """A problem with the user's input or environment, reported as a single line."""


def exit_on_harness_error(main: F) -> F:
    """Turn a HarnessError raised by a command's main() into one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return main(*args, **kwargs)
        except HarnessError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapper  # type: ignore[return-value]
