"""``@immutable``: a value class for the per-CDR path, frozen for mypy but not at run time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def immutable(cls: type[_T]) -> type[_T]:
    """A slots dataclass that mypy holds frozen and Python does not. A frozen dataclass is
    built through ``object.__setattr__`` once per field (an Account: ~4 us instead of ~1),
    and the ledger builds several per CDR. Nothing may assign to one: ``mypy --strict``
    refuses it, and ``dataclasses.replace`` makes the changed copy as before."""
    return dataclass(slots=True)(cls)
