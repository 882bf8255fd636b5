"""Rate cards: loading, effective dating (rule 1) and longest-prefix lookup (rule 3).

A ``RateBook`` is built once from validated cards and never changes, so a reload builds a
new book and swaps the reference: readers never see a half-built index.
"""

from __future__ import annotations

import bisect
import importlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rating.contracts import Product, Rate, RateCard
from rating.domain.tariff import Tariff
from rating.domain.validation import describe_validation_error
from rating.errors import RatingBaseError

# Enough problems to fix a file in one go, few enough to read.
_MAX_PROBLEMS = 20


class RateCardError(RatingBaseError, ValueError):
    """A rate-card source that cannot be used. Each line of the message names the file, the
    card (its ``rate_card_id``, or its position when it has none) and the field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        shown = problems[:_MAX_PROBLEMS]
        if len(problems) > _MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - _MAX_PROBLEMS} more problems")
        super().__init__("\n".join(f"{source}: {p}" for p in shown))


def _card_name(index: int, card_id: object) -> str:
    if isinstance(card_id, str) and card_id:
        return f"card {card_id!r} (rate_cards[{index}])"
    return f"card rate_cards[{index}]"


@dataclass(frozen=True, slots=True)
class _PrefixIndex:
    """One card's rates for one product: exact-match dict probed from the longest length
    down. Only lengths that exist are probed, so a lookup costs at most ~15 dict hits
    whatever the number of prefixes."""

    by_prefix: Mapping[str, Tariff]
    lengths: tuple[int, ...]  # distinct prefix lengths, longest first

    @classmethod
    def build(cls, rates: Iterable[Rate], card: RateCard) -> _PrefixIndex:
        by_prefix = {rate.prefix: Tariff.of(rate, card) for rate in rates}
        lengths = tuple(sorted({len(p) for p in by_prefix}, reverse=True))
        return cls(by_prefix, lengths)

    def longest(self, digits: str) -> Tariff | None:
        n_digits = len(digits)
        get = self.by_prefix.get
        for n in self.lengths:
            if n <= n_digits:
                tariff = get(digits[:n])
                if tariff is not None:
                    return tariff
        return None


def _index_card(card: RateCard) -> dict[Product, _PrefixIndex]:
    grouped: dict[Product, list[Rate]] = defaultdict(list)
    for rate in card.rates:
        grouped[rate.product].append(rate)
    return {product: _PrefixIndex.build(rates, card) for product, rates in grouped.items()}


def _check_cards(cards: list[RateCard]) -> list[str]:
    """Cross-field and cross-card rules a single model cannot express."""
    problems: list[str] = []
    first_index: dict[str, int] = {}
    starts: dict[tuple[str, str, datetime], int] = {}
    for i, card in enumerate(cards):
        name = _card_name(i, card.rate_card_id)
        if card.effective_to is not None and card.effective_to <= card.effective_from:
            problems.append(
                f"{name}: effective_to: must be after effective_from "
                f"({card.effective_to.isoformat()} <= {card.effective_from.isoformat()})"
            )
        if card.rate_card_id in first_index:
            problems.append(
                f"{name}: rate_card_id: duplicate rate_card_id {card.rate_card_id!r} "
                f"(also rate_cards[{first_index[card.rate_card_id]}])"
            )
        else:
            first_index[card.rate_card_id] = i
        # Rule 1 picks the latest effective_from; two cards starting together are ambiguous.
        key = (card.plan, card.currency, card.effective_from)
        if key in starts:
            problems.append(
                f"{name}: effective_from: same plan {card.plan!r}, currency {card.currency} "
                f"and effective_from as rate_cards[{starts[key]}]: which one applies is ambiguous"
            )
        else:
            starts[key] = i
        seen: dict[tuple[Product, str], int] = {}
        for j, rate in enumerate(card.rates):
            pk = (rate.product, rate.prefix)
            if pk in seen:
                problems.append(
                    f"{name}: rates[{j}].prefix: duplicate prefix {rate.prefix!r} for product "
                    f"{rate.product.value} (also rates[{seen[pk]}])"
                )
            else:
                seen[pk] = j
    return problems


class RateBook:
    """Immutable, built once from a list of cards; safe to swap atomically on reload."""

    __slots__ = ("_by_id", "_index", "_timelines", "cards", "source")

    cards: tuple[RateCard, ...]
    source: str

    def __init__(self, cards: tuple[RateCard, ...], source: str) -> None:
        # Use from_cards(): it validates before indexing.
        self.cards = cards
        self.source = source
        self._by_id = {card.rate_card_id: card for card in cards}
        self._index = {card.rate_card_id: _index_card(card) for card in cards}
        # (plan, currency) -> cards sorted by effective_from, and their start times for bisect.
        grouped: dict[tuple[str, str], list[RateCard]] = defaultdict(list)
        for card in cards:
            grouped[(card.plan, card.currency)].append(card)
        self._timelines: dict[tuple[str, str], tuple[list[datetime], list[RateCard]]] = {}
        for key, group in grouped.items():
            group.sort(key=lambda c: c.effective_from)
            self._timelines[key] = ([c.effective_from for c in group], group)

    @classmethod
    def from_cards(cls, cards: list[RateCard], source: str = "<memory>") -> RateBook:
        """Check the cross-card rules (unique ids, no duplicate prefixes, sane dates) and
        build the indexes. Raises ``RateCardError`` naming ``source``."""
        problems = _check_cards(cards)
        if problems:
            raise RateCardError(source, problems)
        return cls(tuple(cards), source)

    def find_card(self, plan: str, currency: str, at: datetime) -> RateCard | None:
        """Rule 1: the card of this plan and currency with effective_from <= at <
        effective_to (None = open) and the latest effective_from."""
        timeline = self._timelines.get((plan, currency))
        if timeline is None:
            return None
        starts, group = timeline
        # Walk back from the last card that has started; a later start that has already
        # ended does not hide an earlier, still-open card.
        for i in range(bisect.bisect_right(starts, at) - 1, -1, -1):
            card = group[i]
            if card.effective_to is None or at < card.effective_to:
                return card
        return None

    def lookup(self, card: RateCard, product: Product, digits: str) -> Rate | None:
        """Rule 3: the rate with the longest prefix of ``digits`` among the card's rates for
        ``product``. Rates of other products never match."""
        tariff = self.tariff(card, product, digits)
        return None if tariff is None else tariff.rate

    def tariff(self, card: RateCard, product: Product, digits: str) -> Tariff | None:
        """:meth:`lookup`'s rate, prepared for rule 6 when the book was built."""
        index = self._index.get(card.rate_card_id)
        if index is None or self._by_id[card.rate_card_id] is not card:
            # A card from elsewhere (not this book): correct but unindexed, so slow.
            index = _index_card(card)
        product_index = index.get(product)
        return None if product_index is None else product_index.longest(digits)

    def __len__(self) -> int:
        return len(self.cards)

    def __repr__(self) -> str:
        return f"RateBook({len(self.cards)} cards from {self.source})"


def _parse_document(path: Path, source: str) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RateCardError(source, [f"cannot read rate-card file: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RateCardError(
            source, [f"not UTF-8 text (invalid byte at offset {exc.start})"]
        ) from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml(text, source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RateCardError(
            source, [f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
        ) from exc


def _parse_yaml(text: str, source: str) -> Any:
    # YAML is a convenience for hand-edited files; JSON needs nothing beyond the stdlib.
    try:
        # Imported by name: PyYAML is optional and ships no type stubs.
        yaml = importlib.import_module("yaml")
    except ImportError as exc:
        raise RateCardError(
            source, ["YAML rate-card files need PyYAML (pip install pyyaml); or use JSON"]
        ) from exc
    try:
        # Same typing as JSON: an unquoted 0.024 is a number and is refused as money, so
        # prices and prefixes must be quoted strings in YAML too.
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise RateCardError(source, [f"not valid YAML{where}: {exc}"]) from exc


def parse_rate_cards(document: Any, source: str = "<memory>") -> RateBook:
    """Validate a decoded rate-card document (``{"rate_cards": [...]}``) into a book."""
    if not isinstance(document, dict):
        raise RateCardError(
            source, [f'expected an object {{"rate_cards": [...]}}, got {type(document).__name__}']
        )
    problems = [f"(root): unknown field {key!r}" for key in document if key != "rate_cards"]
    items = document.get("rate_cards")
    if not isinstance(items, list):
        what = "missing" if items is None else f"must be a list, got {type(items).__name__}"
        raise RateCardError(source, [*problems, f"rate_cards: {what}"])
    cards: list[RateCard] = []
    for i, item in enumerate(items):
        card_id = item.get("rate_card_id") if isinstance(item, dict) else None
        name = _card_name(i, card_id)
        try:
            cards.append(RateCard.model_validate(item))
        except ValidationError as exc:
            problems.extend(f"{name}: {line}" for line in describe_validation_error(exc))
    if problems:
        raise RateCardError(source, problems)
    return RateBook.from_cards(cards, source)


def load_rate_cards(path: str | Path) -> RateBook:
    """Read, validate and index a rate-card file (JSON; YAML when PyYAML is installed).

    Every problem raises ``RateCardError`` naming the file, the card and the field.
    """
    path = Path(path)
    source = str(path)
    return parse_rate_cards(_parse_document(path, source), source)
