"""Named builders of one kind (models, optimizers, schedules, data sources).

The config accepts exactly the names registered here, so an unknown name fails at validation with
the list of known ones, and adding a model or a schedule is one decorated function in one module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, key: str) -> None:
        self.key = key  # the config key whose values name these entries, e.g. "model.name"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(builder: T) -> T:
            self.add(name, builder)
            return builder

        return add

    def add(self, name: str, builder: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is registered twice")
        self._entries[name] = builder

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def expected(self, shown: int = 12) -> str:
        """The known names for an error message, shortened when there are many."""
        names = self.names()
        listed = ", ".join(names[:shown])
        return f"one of {listed}" + (f" (and {len(names) - shown} more)" if len(names) > shown else "")
