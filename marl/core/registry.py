"""One registry per kind (algorithms, envs, networks, mixers, critics)."""
from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from marl.core.errors import MarlError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None, *, overwrite: bool = False):
        """Register `item` under `name`; usable as a decorator when item is None."""

        def add(obj: T) -> T:
            if name in self._items and not overwrite:
                raise MarlError(f"{self.kind} '{name}' is already registered", "pick another name or pass overwrite=True")
            self._items[name] = obj
            return obj

        return add if item is None else add(item)

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(self._items))}"
            raise MarlError(f"unknown {self.kind} '{name}'", hint)
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
