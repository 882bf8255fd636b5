"""State keys are injective for any ids the contract allows, and tenant_of inverts them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rating.keys import (
    KeyKind,
    account_key,
    charge_key,
    funds_key,
    held_key,
    make_key,
    settings_key,
    split_key,
    tenant_of,
    usage_key,
)

# Any non-space character, with the separator and the escape character made common.
ids = st.text(
    alphabet=st.one_of(
        st.sampled_from("/%2F5a"),
        st.characters(blacklist_categories=("Zs", "Cc", "Cs")),
    ),
    min_size=1,
    max_size=12,
)
kinds = st.sampled_from([KeyKind.CHARGE, KeyKind.FUNDS, KeyKind.HELD])


@given(st.tuples(kinds, ids, ids), st.tuples(kinds, ids, ids))
def test_distinct_kind_tenant_id_triples_never_share_a_key(
    a: tuple[KeyKind, str, str], b: tuple[KeyKind, str, str]
) -> None:
    if a != b:
        assert make_key(*a) != make_key(*b)


@given(kinds, ids, ids)
def test_split_key_inverts_make_key(kind: KeyKind, tenant: str, ident: str) -> None:
    key = make_key(kind, tenant, ident)
    assert split_key(key) == (kind, tenant, (ident,))
    assert tenant_of(key) == tenant


@given(ids, ids)
def test_every_key_kind_names_its_tenant(tenant: str, ident: str) -> None:
    for key in (
        account_key(tenant),
        settings_key(tenant),
        charge_key(tenant, ident),
        funds_key(tenant, ident),
        held_key(tenant, "42"),
        usage_key(tenant, "2026-11-01", ident),
    ):
        assert tenant_of(key) == tenant
    assert account_key(tenant) != settings_key(tenant)


def test_the_reported_collision_is_gone() -> None:
    # acme charged for CDR "eu/x" vs acme/eu charged for CDR "x": one key before the fix.
    assert charge_key("acme", "eu/x") != charge_key("acme/eu", "x")
    assert tenant_of(account_key("acme/eu")) == "acme/eu"
    assert charge_key("a%2Fb", "x") != charge_key("a/b", "x")
