"""Ledger state keys: one injective encoding for every key in the accounts table.

Ids (tenant, CDR, funds event) may contain any non-space character, ``/`` and ``%``
included (CONTRACTS.md). A key is a kind letter and its components joined by ``/``; each
component is *escaped* first: ``%`` -> ``%25`` and ``/`` -> ``%2F`` (nothing else changes, so
keys stay readable, unicode included). An escaped component contains no ``/``, so splitting a
key on ``/`` gives back exactly the components, and unescaping each gives back the ids:
distinct (kind, tenant, id) tuples never share a key, and :func:`tenant_of` inverts it.

Kinds (the letter is the first component):

- ``a/{tenant}``               the account
- ``c/{tenant}/{cdr_id}``      a charge marker
- ``f/{tenant}/{event_id}``    a funds marker
- ``s/{tenant}``               legacy (state version 2): the outputs of the latest settings
  message; read only to republish a replayed settings record, deleted by the next settings
- ``o/{tenant}/{offset}``      the outbox: a ledger record's outputs for that tenant, kept until
  they are published (ledger.py)
- ``h/{tenant}/{offset}``      a message held until the tenant's first settings arrive
- ``u/{tenant}/{day}/{product}``  usage totals of one UTC day and product (rating.usage)
- ``r/{tenant}/{kind}``        recent activity: a page of the last charges or funds events
  (rating.usage); ``r/{tenant}`` and ``r/{tenant}/{kind}/{slot}``: the legacy ring it replaced

``KEY_VERSION`` is stored with the state version so a worker never reads keys written under
another encoding as if they were its own.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

#: Version 2: escaped components (version 1 joined raw ids with ``/``, not injective).
KEY_VERSION: Final = 2


class KeyKind(StrEnum):
    ACCOUNT = "a"
    CHARGE = "c"
    FUNDS = "f"
    SETTINGS = "s"
    HELD = "h"
    USAGE = "u"
    RECENT = "r"
    OUTBOX = "o"


def escape(part: str) -> str:
    # Order matters: escape the escape character first so "%2F" in an id stays distinct
    # from an escaped "/". Most ids have neither: testing is cheaper than two replaces.
    if "%" in part or "/" in part:
        return part.replace("%", "%25").replace("/", "%2F")
    return part


def unescape(part: str) -> str:
    return part.replace("%2F", "/").replace("%25", "%")


def make_key(kind: KeyKind, tenant: str, *parts: str) -> str:
    # Several keys per CDR: a KeyKind is its letter as a str (no Enum.value lookup), and
    # components are appended without a generator.
    key = kind + "/" + escape(tenant)
    for part in parts:
        key += "/" + escape(part)
    return key


def split_key(key: str) -> tuple[KeyKind, str, tuple[str, ...]]:
    """(kind, tenant, other components) of a key made by :func:`make_key`."""
    kind, tenant, *rest = key.split("/")
    return KeyKind(kind), unescape(tenant), tuple(unescape(p) for p in rest)


def account_key(tenant: str) -> str:
    return make_key(KeyKind.ACCOUNT, tenant)


def charge_key(tenant: str, cdr_id: str) -> str:
    return make_key(KeyKind.CHARGE, tenant, cdr_id)


def funds_key(tenant: str, event_id: str) -> str:
    return make_key(KeyKind.FUNDS, tenant, event_id)


def settings_key(tenant: str) -> str:
    return make_key(KeyKind.SETTINGS, tenant)


def held_key(tenant: str, held: str) -> str:
    """``held``: the ledger offset it arrived at, ``.00001``... after the record's first
    (``rating.ledger.held_id``)."""
    return make_key(KeyKind.HELD, tenant, held)


def outbox_key(tenant: str, offset: int) -> str:
    return make_key(KeyKind.OUTBOX, tenant, str(offset))


def usage_key(tenant: str, day: str, product: str) -> str:
    return make_key(KeyKind.USAGE, tenant, day, product)


def recent_key(tenant: str, kind: str | None = None) -> str:
    """A tenant's page of recent ``kind`` entries; without a kind, the legacy ring's counter."""
    if kind is None:
        return make_key(KeyKind.RECENT, tenant)
    return make_key(KeyKind.RECENT, tenant, kind)


def tenant_of(key: str) -> str:
    """The tenant a state key belongs to (for attributing keys to partitions)."""
    return split_key(key)[1]


#: Seal records on the accounts changelog (streaming/store.py): markers, no state; ``~`` is
#: no kind letter, so they never collide with a state key and name no tenant.
SEAL_PREFIX: Final = "~seal/"


def is_seal(key: str) -> bool:
    return key.startswith(SEAL_PREFIX)


def is_kind(key: str, kind: KeyKind) -> bool:
    return key.startswith(kind.value + "/")
