"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

EXIT_BAD_INPUT = 2

F = TypeVar("F", bound=Callable[..., int])


class HarnessError(Exception):
    """A problem with the user's input or environment, reported as a single line."""


class ConfigError(HarnessError):
    """A config, search or YAML file that cannot be used as written."""


def redact(url: str) -> str:
    """A database or server URL without its password, for messages and reports."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


CONFIG_SUFFIXES = (".yaml", ".yml")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad command line reported like any other bad input (one line, exit code 2),
    the description first in ``--help``, and a config file given after ``--set`` taken as the file."""

    def error(self, message: str) -> NoReturn:
        raise HarnessError(f"{self.prog}: {message} (see {self.prog} --help)")

    def format_help(self) -> str:
        # What the command does first, then how to call it: argparse puts the usage first.
        formatter = self._get_formatter()
        formatter.add_text(self.description)
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        for group in self._action_groups:
            formatter.start_section(group.title)
            formatter.add_text(group.description)
            formatter.add_arguments(group._group_actions)
            formatter.end_section()
        formatter.add_text(self.epilog)
        return formatter.format_help()

    def parse_args(self, args: list[str] | None = None, namespace: Any = None) -> Any:
        return super().parse_args(self._files_out_of_overrides(sys.argv[1:] if args is None else list(args)), namespace)

    @staticmethod
    def _files_out_of_overrides(args: list[str]) -> list[str]:
        """``--set a=1 exp.yaml`` as ``exp.yaml --set a=1``: --set takes every value up to the next
        option, and a YAML file among them is not a KEY=VALUE but the command's config file."""
        files, rest, in_set = [], [], False
        for arg in args:
            if arg.startswith("-"):
                in_set = arg == "--set"
            elif in_set and "=" not in arg and arg.endswith(CONFIG_SUFFIXES):
                files.append(arg)
                continue
            rest.append(arg)
        return files + rest

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
