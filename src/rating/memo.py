"""``RememberLast``: a function's result for the last argument, for values a batch repeats."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class RememberLast(Generic[A, R]):
    """``fn(arg)``, computed again only when ``arg`` is not the last one asked: a ledger batch
    has one ``now`` for all its CDRs. Compared by identity and holding the argument itself,
    so a new object at a recycled address can never match."""

    __slots__ = ("_arg", "_fn", "_result")

    def __init__(self, fn: Callable[[A], R]) -> None:
        self._fn = fn
        self._arg: A | None = None
        self._result: R | None = None

    def __call__(self, arg: A) -> R:
        if arg is not self._arg or self._result is None:
            self._result = self._fn(arg)
            self._arg = arg
        return self._result
