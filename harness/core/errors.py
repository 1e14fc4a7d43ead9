"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

EXIT_BAD_INPUT = 2

F = TypeVar("F", bound=Callable[..., int])


class HarnessError(Exception):
    """A problem with the user's input or environment, reported as a single line."""


class ConfigError(HarnessError):
    """A config, search or YAML file that cannot be used as written."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad command line reported like any other bad input: one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise HarnessError(f"{self.prog}: {message} (see {self.prog} --help)")

    def add_overrides(self, example: str = "train.epochs=5 data.batch_size=256") -> None:
        """``--set K=V ...`` into ``args.overrides``, as every command that reads a config takes it."""
        self.add_argument(
            "--set",
            dest="overrides",
            action="extend",
            nargs="+",
            default=[],
            metavar="KEY=VALUE",
            help=f"override config keys, e.g. --set {example}",
        )


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
