"""The admin page's pure parts: locale formatting, language choice, sessions, throttling,
form validation and the chart's data."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from rating.web import i18n
from rating.web.i18n import Lang
from rating.web.page import chart_points, check_funds, check_settings, month_by_product
from rating.web.session import THROTTLE_MAX_SECONDS, Sessions, Throttle

TOKEN = "unit-test-admin-token-0123"


@pytest.mark.parametrize(
    ("value", "lang", "text"),
    [
        ("1234.5", Lang.EN, "USD 1,234.50"),
        ("1234.5", Lang.NL, "USD 1.234,50"),
        ("1234.5", Lang.DA, "1.234,50 USD"),
        ("0.0240", Lang.EN, "USD 0.024"),
        ("12.3456", Lang.DA, "12,3456 USD"),  # never rounded
        ("-0.0720", Lang.NL, "USD -0,072"),
        ("1000000", Lang.EN, "USD 1,000,000.00"),
        ("0", Lang.EN, "USD 0.00"),
    ],
)
def test_money_is_exact_and_formatted_per_locale(value: str, lang: Lang, text: str) -> None:
    assert i18n.money(Decimal(value), "USD", lang) == text


def test_dates_minutes_and_times_per_locale() -> None:
    d = date(2026, 3, 5)
    assert [i18n.day(d, lang) for lang in Lang] == ["Mar 5, 2026", "5 mrt. 2026", "5. mar. 2026"]
    t = datetime(2026, 3, 5, 14, 5, tzinfo=UTC)
    assert i18n.moment(t, Lang.DA) == "5. mar. 2026 kl. 14.05 UTC"
    assert i18n.moment(t, Lang.EN) == "Mar 5, 2026 14:05 UTC"
    assert i18n.minutes(90, Lang.NL) == "1,5"


def test_every_string_has_all_three_languages() -> None:
    for key in i18n._STRINGS:
        assert all(i18n.text(lang, key) for lang in Lang), key


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        (None, Lang.EN),
        ("da-DK,da;q=0.9,en;q=0.8", Lang.DA),
        ("fr-FR,nl;q=0.5,en;q=0.4", Lang.NL),
        ("en;q=0.1,nl-BE;q=0.9", Lang.NL),
        ("de,fr", Lang.EN),
        ("da;q=0,en", Lang.EN),
        ("da;q=abc,nl", Lang.NL),
    ],
)
def test_accept_language_negotiation(header: str | None, lang: Lang) -> None:
    assert i18n.negotiate(header) is lang


def test_a_session_cookie_is_signed_expiring_and_bound_to_the_token() -> None:
    sessions = Sessions(TOKEN, lifetime=60)
    cookie, session = sessions.issue(now=1000)
    assert TOKEN not in cookie
    assert sessions.read(cookie, now=1059) == session
    assert sessions.read(cookie, now=1060) is None  # expired
    payload, _, sig = cookie.partition(".")
    other = "A" if sig[-1] != "A" else "B"  # always a different last character
    assert sessions.read(f"{payload}.{sig[:-1]}{other}", now=1001) is None  # tampered signature
    assert sessions.read(f"x{payload}.{sig}", now=1001) is None  # tampered payload
    assert Sessions("another-admin-token-456789").read(cookie, now=1001) is None
    assert Sessions.csrf_ok(session, session.csrf)
    assert not Sessions.csrf_ok(session, session.csrf + "x")
    assert not Sessions.csrf_ok(session, None)
    assert sessions.token_ok(TOKEN)
    assert not sessions.token_ok(TOKEN[:-1])


def test_failed_sign_ins_are_slowed_per_client_and_bounded() -> None:
    throttle = Throttle()
    delays = [throttle.failed("1.2.3.4", now=float(i)) for i in range(8)]
    assert delays[:3] == [0.5, 1.0, 2.0]
    assert max(delays) == THROTTLE_MAX_SECONDS
    assert throttle.failed("5.6.7.8", now=9.0) == 0.5  # another client is not slowed
    throttle.succeeded("1.2.3.4")
    assert throttle.failed("1.2.3.4", now=10.0) == 0.5
    assert throttle.failed("9.9.9.9", now=10_000.0) == 0.5  # forgotten after the window


@pytest.mark.parametrize(
    ("text", "lang", "error"),
    [
        ("", Lang.EN, "e_required"),
        ("-5", Lang.EN, "e_negative"),
        ("0", Lang.EN, "e_positive"),
        ("12,50", Lang.EN, "e_malformed"),
        ("1e3", Lang.EN, "e_malformed"),
        ("abc", Lang.DA, "e_malformed"),
        ("1000000000000000", Lang.EN, "e_too_large"),
    ],
)
def test_funds_form_errors(text: str, lang: Lang, error: str) -> None:
    assert check_funds(text, lang)[1] == {"amount": error}


def test_funds_form_accepts_a_decimal_comma_in_dutch_and_danish() -> None:
    assert check_funds("12,50", Lang.NL) == ("12.50", {})
    assert check_funds(" 7.25 ", Lang.EN) == ("7.25", {})


def test_settings_form_validation_names_the_field() -> None:
    assert check_settings(True, "-5", "10", Lang.EN)[1] == {"recharge_amount": "e_negative"}
    assert check_settings(False, "", "4", Lang.EN)[1] == {"recharge_amount": "e_amount_for_trigger"}
    assert check_settings(True, "", "", Lang.EN)[1] == {"recharge_amount": "e_required"}
    assert check_settings(True, "0", "1", Lang.EN)[1] == {"recharge_amount": "e_positive"}
    assert check_settings(True, "10", "x", Lang.EN)[1] == {"trigger": "e_malformed"}
    assert check_settings(True, "10", "-1", Lang.EN)[1] == {"trigger": "e_negative"}
    auto, errors = check_settings(True, "30,5", "2,50", Lang.DA)
    assert errors == {}
    assert auto is not None
    assert (auto.recharge_amount, auto.trigger_balance) == (Decimal("30.5"), Decimal("2.50"))
    off, errors = check_settings(False, "", "", Lang.EN)
    assert errors == {}
    assert off is not None
    assert not off.enabled


def test_chart_has_30_days_and_month_totals_sum_the_rows_exactly() -> None:
    usage = {
        "currency": "USD",
        "rows": [
            {
                "day": "2026-10-31",
                "product": "tollfree_inbound",
                "calls": 1,
                "billable_seconds": 60,
                "amount": "0.0220",
            },
            {
                "day": "2026-11-02",
                "product": "conferencing_dialout",
                "calls": 2,
                "billable_seconds": 120,
                "amount": "0.0480",
            },
            {
                "day": "2026-11-02",
                "product": "tollfree_inbound",
                "calls": 1,
                "billable_seconds": 11,
                "amount": "0.0001",
            },
        ],
    }
    today = date(2026, 11, 20)
    points = chart_points(usage, today, Lang.EN)
    assert len(points) == 30
    assert points[-1]["day"] == "2026-11-20"
    assert next(p for p in points if p["day"] == "2026-11-02")["amount"] == "0.0481"
    month = month_by_product(usage, today)
    assert month["total"] == (3, 131, Decimal("0.0481"))  # October's row is not this month
