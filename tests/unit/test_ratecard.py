"""Rate cards: file validation (errors name file, card and field), rule 1 and rule 3."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from rating.contracts import Product, Rate, RateCard
from rating.domain.ratecard import RateBook, RateCardError, load_rate_cards, parse_rate_cards

SAMPLE = Path(__file__).resolve().parents[2] / "ratecards" / "sample.json"
DIALOUT = Product.CONFERENCING_DIALOUT
DIALIN = Product.CONFERENCING_TOLLFREE_DIALIN
INBOUND = Product.TOLLFREE_INBOUND


def t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def rate_dict(
    prefix: str = "1", product: str = "conferencing_dialout", **kw: Any
) -> dict[str, Any]:
    base = {
        "product": product,
        "prefix": prefix,
        "zone": f"zone-{prefix}",
        "per_minute": "0.0240",
        "first_increment": 60,
        "next_increment": 60,
    }
    return base | kw


def card_dict(
    card_id: str = "c1", rates: list[dict[str, Any]] | None = None, **kw: Any
) -> dict[str, Any]:
    base = {
        "rate_card_id": card_id,
        "plan": "standard",
        "currency": "USD",
        "effective_from": "2026-11-01T00:00:00Z",
        "effective_to": None,
        "precision": 4,
        "rates": rates if rates is not None else [rate_dict()],
    }
    return base | kw


def card(card_id: str = "c1", rates: list[dict[str, Any]] | None = None, **kw: Any) -> RateCard:
    return RateCard.model_validate(card_dict(card_id, rates, **kw))


def write(tmp_path: Path, document: Any, name: str = "cards.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document, indent=2))
    return path


# --- the sample file ---------------------------------------------------------------------


def test_sample_file_loads() -> None:
    book = load_rate_cards(SAMPLE)
    assert len(book) == 6
    ids = {c.rate_card_id for c in book.cards}
    assert {"standard-usd-2026-11", "standard-usd-2026-11b", "enterprise-eur-2026-11"} <= ids
    assert {c.precision for c in book.cards} == {4, 6}


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        ("2026-10-31T23:59:59Z", "standard-usd-2026-10"),
        ("2026-11-01T00:00:00Z", "standard-usd-2026-11"),
        ("2026-11-15T23:59:59.999999Z", "standard-usd-2026-11"),
        ("2026-11-16T00:00:00Z", "standard-usd-2026-11b"),
        ("2027-06-01T00:00:00Z", "standard-usd-2026-11b"),
    ],
)
def test_sample_mid_month_price_change(at: str, expected: str) -> None:
    found = load_rate_cards(SAMPLE).find_card("standard", "USD", t(at))
    assert found is not None
    assert found.rate_card_id == expected


# --- rule 1: effective dating ------------------------------------------------------------


def test_effective_from_is_inclusive_and_effective_to_exclusive() -> None:
    book = RateBook.from_cards(
        [card("nov", effective_from="2026-11-01T00:00:00Z", effective_to="2026-12-01T00:00:00Z")]
    )
    assert book.find_card("standard", "USD", t("2026-10-31T23:59:59.999999Z")) is None
    assert book.find_card("standard", "USD", t("2026-11-01T00:00:00Z")) is not None
    assert book.find_card("standard", "USD", t("2026-11-30T23:59:59.999999Z")) is not None
    assert book.find_card("standard", "USD", t("2026-12-01T00:00:00Z")) is None


def test_latest_effective_from_wins_on_overlap() -> None:
    book = RateBook.from_cards(
        [
            card("later", effective_from="2026-11-16T00:00:00Z"),
            card("open", effective_from="2026-11-01T00:00:00Z"),
            card(
                "short", effective_from="2026-11-20T00:00:00Z", effective_to="2026-11-21T00:00:00Z"
            ),
        ]
    )

    def found(at: str) -> str | None:
        c = book.find_card("standard", "USD", t(at))
        return None if c is None else c.rate_card_id

    assert found("2026-11-10T00:00:00Z") == "open"
    assert found("2026-11-16T00:00:00Z") == "later"
    assert found("2026-11-20T12:00:00Z") == "short"
    # the short card has ended: an earlier card that is still open applies again
    assert found("2026-11-21T00:00:00Z") == "later"


def test_other_plan_or_currency_finds_no_card() -> None:
    book = RateBook.from_cards([card("c")])
    at = t("2026-11-05T00:00:00Z")
    assert book.find_card("standard", "USD", at) is not None
    assert book.find_card("standard", "EUR", at) is None
    assert book.find_card("enterprise", "USD", at) is None


def test_empty_book_finds_nothing() -> None:
    assert RateBook.from_cards([]).find_card("standard", "USD", t("2026-11-05T00:00:00Z")) is None


# --- rule 3: longest prefix --------------------------------------------------------------


@pytest.fixture
def nanp_book() -> RateBook:
    rates = [
        rate_dict("1", per_minute="0.0100"),
        rate_dict("1415", per_minute="0.0200"),
        rate_dict("14155", per_minute="0.0300"),
        rate_dict("44", product="tollfree_inbound", per_minute="0.0400"),
        rate_dict("44", product="conferencing_tollfree_dialin", per_minute="0.0500"),
    ]
    return RateBook.from_cards([card("nanp", rates)])


@pytest.mark.parametrize(
    ("digits", "prefix"),
    [
        ("14155550100", "14155"),
        ("14156660100", "1415"),
        ("12125550100", "1"),
        ("1415", "1415"),  # the number itself equals a prefix
        ("141", "1"),  # shorter than the longer prefixes
        ("1", "1"),
        ("44", None),  # only other products know 44
        ("33123456789", None),
    ],
)
def test_longest_prefix(nanp_book: RateBook, digits: str, prefix: str | None) -> None:
    found = nanp_book.lookup(nanp_book.cards[0], DIALOUT, digits)
    assert (found.prefix if found else None) == prefix


def test_equal_prefixes_of_other_products_do_not_leak(nanp_book: RateBook) -> None:
    c = nanp_book.cards[0]
    inbound = nanp_book.lookup(c, INBOUND, "447700900123")
    dialin = nanp_book.lookup(c, DIALIN, "447700900123")
    assert inbound is not None
    assert dialin is not None
    assert (inbound.product, dialin.product) == (INBOUND, DIALIN)
    assert inbound.per_minute != dialin.per_minute
    assert nanp_book.lookup(c, DIALOUT, "447700900123") is None
    assert nanp_book.lookup(c, INBOUND, "14155550100") is None


def test_lookup_is_per_card() -> None:
    book = RateBook.from_cards(
        [card("a", [rate_dict("44")]), card("b", [rate_dict("49")], currency="EUR")]
    )
    a, b = book.cards
    assert book.lookup(a, DIALOUT, "4420") is not None
    assert book.lookup(b, DIALOUT, "4420") is None
    assert book.lookup(b, DIALOUT, "4930") is not None


def test_lookup_on_a_card_from_outside_the_book_is_still_correct() -> None:
    book = RateBook.from_cards([card("a", [rate_dict("44")])])
    stranger = card("a", [rate_dict("4930")])  # same id, different content
    found = book.lookup(stranger, DIALOUT, "493012345")
    assert found is not None
    assert found.prefix == "4930"


def test_fifty_thousand_prefixes() -> None:
    rng = random.Random(7)
    prefixes: set[str] = {"4"}
    while len(prefixes) < 50_000:
        prefixes.add("4" + "".join(rng.choices("0123456789", k=rng.randint(1, 7))))
    rates = [Rate.model_validate(rate_dict(p, per_minute="0.0100")) for p in sorted(prefixes)]
    book = RateBook.from_cards([RateCard.model_validate(card_dict("big") | {"rates": rates})])
    big = book.cards[0]
    # numbers extending known prefixes, and random ones (which may match only "4" or nothing)
    numbers = [
        p + "".join(rng.choices("0123456789", k=5)) for p in rng.sample(sorted(prefixes), 500)
    ]
    numbers += ["".join(rng.choices("0123456789", k=11)) for _ in range(500)]
    for number in numbers:
        expected = next(
            (number[:n] for n in range(len(number), 0, -1) if number[:n] in prefixes), None
        )
        found = book.lookup(big, DIALOUT, number)
        assert (found.prefix if found else None) == expected, number


# --- file errors: each names the file, the card and the field ----------------------------


def error_for(path: Path) -> str:
    with pytest.raises(RateCardError) as info:
        load_rate_cards(path)
    text = str(info.value)
    assert str(path) in text
    return text


def test_missing_file(tmp_path: Path) -> None:
    text = error_for(tmp_path / "nope.json")
    assert "cannot read" in text


def test_directory_is_not_readable(tmp_path: Path) -> None:
    assert "cannot read" in error_for(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"rate_cards": [{"zone": "K\xf8benhavn"}]}')
    assert "not UTF-8" in error_for(path)


def test_invalid_json_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"rate_cards": [\n  {"rate_card_id": "x",\n  }\n]}')
    text = error_for(path)
    assert "not valid JSON" in text
    assert "line 3 column 3" in text


def test_missing_field_names_card_and_path(tmp_path: Path) -> None:
    rates = [rate_dict(str(p)) for p in (1, 2, 3, 4)]
    del rates[3]["per_minute"]
    text = error_for(write(tmp_path, {"rate_cards": [card_dict("std-usd", rates)]}))
    assert "card 'std-usd'" in text
    assert "rates[3].per_minute: Field required" in text


def test_card_without_id_is_named_by_position(tmp_path: Path) -> None:
    nameless = card_dict("x")
    del nameless["rate_card_id"]
    text = error_for(write(tmp_path, {"rate_cards": [card_dict("ok"), nameless]}))
    assert "card rate_cards[1]: rate_card_id: Field required" in text


def test_money_as_json_number_is_refused(tmp_path: Path) -> None:
    rates = [rate_dict("1"), rate_dict("44", per_minute=0.024)]
    text = error_for(write(tmp_path, {"rate_cards": [card_dict("std-usd", rates)]}))
    assert "card 'std-usd'" in text
    assert "rates[1].per_minute" in text
    assert "decimal string" in text


def test_every_problem_is_reported(tmp_path: Path) -> None:
    bad_rate = rate_dict("44", first_increment=0, connection_fee="-1")
    document = {"rate_cards": [card_dict("a", [bad_rate]), card_dict("b", currency="usd")]}
    text = error_for(write(tmp_path, document))
    assert "card 'a' (rate_cards[0]): rates[0].first_increment" in text
    assert "card 'a' (rate_cards[0]): rates[0].connection_fee" in text
    assert "card 'b' (rate_cards[1]): currency" in text


@pytest.mark.parametrize("effective_to", ["2026-11-01T00:00:00Z", "2026-10-01T00:00:00Z"])
def test_effective_to_must_follow_effective_from(tmp_path: Path, effective_to: str) -> None:
    document = {"rate_cards": [card_dict("std-usd", effective_to=effective_to)]}
    text = error_for(write(tmp_path, document))
    assert "card 'std-usd'" in text
    assert "effective_to: must be after effective_from" in text


def test_duplicate_prefix_within_a_card(tmp_path: Path) -> None:
    rates = [
        rate_dict("1"),
        rate_dict("44"),
        rate_dict("44", product="tollfree_inbound"),
        rate_dict("44"),
    ]
    text = error_for(write(tmp_path, {"rate_cards": [card_dict("std-usd", rates)]}))
    assert "card 'std-usd'" in text
    assert "rates[3].prefix: duplicate prefix '44' for product conferencing_dialout" in text
    assert "rates[2]" not in text  # same prefix, other product: allowed


def test_duplicate_card_id(tmp_path: Path) -> None:
    document = {
        "rate_cards": [
            card_dict("std-usd"),
            card_dict("std-usd", effective_from="2026-12-01T00:00:00Z"),
        ]
    }
    text = error_for(write(tmp_path, document))
    assert "card 'std-usd' (rate_cards[1]): rate_card_id: duplicate rate_card_id" in text


def test_same_start_for_same_plan_and_currency_is_ambiguous(tmp_path: Path) -> None:
    document = {"rate_cards": [card_dict("a"), card_dict("b")]}
    text = error_for(write(tmp_path, document))
    assert "card 'b' (rate_cards[1]): effective_from" in text
    assert "ambiguous" in text


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "expected an object"),
        ({}, "rate_cards: missing"),
        ({"rate_cards": {}}, "rate_cards: must be a list"),
        ({"rate_cards": [], "extra": 1}, "unknown field 'extra'"),
        ({"rate_cards": [42]}, "card rate_cards[0]: (root): Input should be a valid dictionary"),
    ],
)
def test_document_shape(tmp_path: Path, document: Any, message: str) -> None:
    assert message in error_for(write(tmp_path, document))


def test_from_cards_names_the_source() -> None:
    with pytest.raises(RateCardError, match=r"topic rating\.rate-cards: card 'a'"):
        RateBook.from_cards([card("a"), card("a")], source="topic rating.rate-cards")


def test_parse_rate_cards_from_a_document() -> None:
    book = parse_rate_cards({"rate_cards": [card_dict("a")]})
    assert [c.rate_card_id for c in book.cards] == ["a"]


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "cards.yaml"
    path.write_text(
        "rate_cards:\n"
        "  - rate_card_id: y\n    plan: standard\n    currency: USD\n"
        "    effective_from: '2026-11-01T00:00:00Z'\n    rates:\n"
        "      - {product: conferencing_dialout, prefix: '1', zone: US, per_minute: '0.01',\n"
        "         first_increment: 60, next_increment: 60}\n"
    )
    book = load_rate_cards(path)
    assert book.cards[0].rates[0].per_minute == Decimal("0.01")
    assert book.cards[0].effective_from == t("2026-11-01T00:00:00Z")


def test_yaml_errors_have_a_position(tmp_path: Path) -> None:
    path = tmp_path / "cards.yml"
    path.write_text("rate_cards: [\n  {a: 1\n")
    text = error_for(path)
    assert "not valid YAML at line" in text


def test_book_does_not_see_later_changes_to_the_input_list() -> None:
    cards = [card("a", [rate_dict("44")])]
    book = RateBook.from_cards(cards)
    cards.append(card("b", effective_from="2026-12-01T00:00:00Z"))
    assert len(book.cards) == 1
    assert book.find_card("standard", "USD", t("2026-12-02T00:00:00Z")) == cards[0]
