"""English, Dutch and Danish: the page's strings and locale formatting of money and dates.

Dutch and Danish wording follows Microsoft's own "Communication Credits" admin article in
those languages (shared/seeds). Money is formatted from the Decimal, never via float, and
never rounded: a balance of 12.3456 shows four decimals (at least two are always shown).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Final


class Lang(StrEnum):
    EN = "en"
    NL = "nl"
    DA = "da"


LANG_NAMES: Final = {Lang.EN: "English", Lang.NL: "Nederlands", Lang.DA: "Dansk"}

_MONTHS: Final = {
    Lang.EN: [
        "Jan",
        "Feb",
        "Mar",
        "Apr",
        "May",
        "Jun",
        "Jul",
        "Aug",
        "Sep",
        "Oct",
        "Nov",
        "Dec",
    ],
    Lang.NL: [
        "jan.",
        "feb.",
        "mrt.",
        "apr.",
        "mei",
        "jun.",
        "jul.",
        "aug.",
        "sep.",
        "okt.",
        "nov.",
        "dec.",
    ],
    Lang.DA: [
        "jan.",
        "feb.",
        "mar.",
        "apr.",
        "maj",
        "jun.",
        "jul.",
        "aug.",
        "sep.",
        "okt.",
        "nov.",
        "dec.",
    ],
}

# key -> (en, nl, da)
_STRINGS: Final[dict[str, tuple[str, str, str]]] = {
    "title": ("Communication Credits", "Communicatietegoeden", "Kommunikationskreditter"),
    "admin_token": ("Admin token", "Beheerderstoken", "Administratortoken"),
    "sign_in": ("Sign in", "Aanmelden", "Log på"),
    "sign_out": ("Sign out", "Afmelden", "Log af"),
    "sign_in_failed": (
        "Sign-in failed. Check the token and try again.",
        "Aanmelden is mislukt. Controleer het token en probeer het opnieuw.",
        "Du kunne ikke logge på. Kontrollér tokenet, og prøv igen.",
    ),
    "admin_off": (
        "The admin page is off: set RATING_ADMIN_TOKEN on the workers.",
        "De beheerpagina staat uit: stel RATING_ADMIN_TOKEN in op de workers.",
        "Administrationssiden er slået fra: angiv RATING_ADMIN_TOKEN på workerne.",
    ),
    "session_expired": (
        "Your session has expired or the form is out of date. Sign in again.",
        "Uw sessie is verlopen of het formulier is verouderd. Meld u opnieuw aan.",
        "Din session er udløbet, eller formularen er forældet. Log på igen.",
    ),
    "tenants": ("Tenants", "Tenants", "Lejere"),
    "all_tenants": ("All tenants", "Alle tenants", "Alle lejere"),
    "search_label": ("Search by tenant id", "Zoeken op tenant-id", "Søg efter lejer-id"),
    "search": ("Search", "Zoeken", "Søg"),
    "tenant": ("Tenant", "Tenant", "Lejer"),
    "balance": ("Balance", "Saldo", "Saldo"),
    "currency": ("Currency", "Valuta", "Valuta"),
    "state": ("State", "Status", "Status"),
    "st_exhausted": ("Exhausted", "Uitgeput", "Opbrugt"),
    "st_low": ("Low", "Laag", "Lav"),
    "st_recharge_outstanding": (
        "Recharge outstanding",
        "Aanvulling in behandeling",
        "Opfyldning afventer",
    ),
    "st_recharge_failing": ("Recharge failing", "Aanvullen mislukt", "Opfyldning mislykkes"),
    "st_ok": ("OK", "OK", "OK"),
    "no_tenants": ("No tenants found.", "Geen tenants gevonden.", "Ingen lejere fundet."),
    "partial": (
        "Not every worker answered; the list may be incomplete.",
        "Niet elke worker heeft geantwoord; de lijst is mogelijk onvolledig.",
        "Ikke alle workere svarede; listen kan være ufuldstændig.",
    ),
    "busy": (
        "The workers are sharing out the tenants; try again in a moment.",
        "De workers verdelen de tenants; probeer het zo opnieuw.",
        "Workerne fordeler lejerne; prøv igen om et øjeblik.",
    ),
    "unknown_tenant": ("Unknown tenant.", "Onbekende tenant.", "Ukendt lejer."),
    "auto_recharge": ("Auto-recharge", "Automatisch aanvullen", "Automatisk opfyldning"),
    "auto_recharge_settings": (
        "Auto-recharge settings",
        "Instellingen voor automatisch aanvullen",
        "Indstillinger for automatisk opfyldning",
    ),
    "on": ("On", "Aan", "Til"),
    "off": ("Off", "Uit", "Fra"),
    "recharge_amount": ("Recharge amount", "Aanvulbedrag", "Opfyldningsbeløb"),
    "trigger": (
        "When the balance falls below",
        "Wanneer het saldo onder",
        "Når saldoen er under",
    ),
    "save": ("Save changes", "Wijzigingen opslaan", "Gem ændringer"),
    "add_more_funds": ("Add more funds", "Meer tegoeden toevoegen", "Indsæt flere penge"),
    "amount_to_add": ("Amount to add", "Toe te voegen bedrag", "Beløb, der skal indsættes"),
    "add_funds": ("Add funds", "Tegoeden toevoegen", "Indsæt penge"),
    "low_alert": (
        "Low-balance alert",
        "Waarschuwing bij laag saldo",
        "Advarsel ved lav saldo",
    ),
    "none": ("None", "Geen", "Ingen"),
    "outstanding": ("Outstanding recharge", "Openstaande aanvulling", "Afventende opfyldning"),
    "attempts": ("Attempts", "Pogingen", "Forsøg"),
    "failures": ("Failures", "Mislukte pogingen", "Fejlede forsøg"),
    "next_due": ("Next step due", "Volgende stap om", "Næste trin"),
    "recharge_failing_note": (
        "Auto-recharge has stopped after repeated failures. Add funds or save the settings "
        "to resume.",
        "Automatisch aanvullen is gestopt na herhaalde fouten. Voeg tegoeden toe of sla de "
        "instellingen op om door te gaan.",
        "Automatisk opfyldning er stoppet efter gentagne fejl. Indsæt penge, eller gem "
        "indstillingerne for at fortsætte.",
    ),
    "consumption": ("Consumption", "Verbruik", "Forbrug"),
    "this_month": ("This month", "Deze maand", "Denne måned"),
    "last_30": ("Last 30 days", "Afgelopen 30 dagen", "Seneste 30 dage"),
    "product": ("Product", "Product", "Produkt"),
    "calls": ("Calls", "Gesprekken", "Opkald"),
    "minutes": ("Minutes", "Minuten", "Minutter"),
    "amount": ("Amount", "Bedrag", "Beløb"),
    "total": ("Total", "Totaal", "I alt"),
    "chart_label": (
        "Amount per day, last 30 days",
        "Bedrag per dag, afgelopen 30 dagen",
        "Beløb pr. dag, seneste 30 dage",
    ),
    "recent_charges": ("Last 20 charges", "Laatste 20 kosten", "Seneste 20 debiteringer"),
    "recent_funds": ("Recent funds events", "Recente tegoedmutaties", "Seneste indbetalinger"),
    "time": ("Time", "Tijd", "Tidspunkt"),
    "call_start": ("Call start", "Begin gesprek", "Opkaldets start"),
    "number": ("Number", "Nummer", "Nummer"),
    "balance_after": ("Balance after", "Saldo na", "Saldo efter"),
    "kind": ("Kind", "Soort", "Type"),
    "event": ("Event", "Gebeurtenis", "Hændelse"),
    "nothing_yet": ("Nothing yet.", "Nog niets.", "Intet endnu."),
    "language": ("Language", "Taal", "Sprog"),
    "applied": (
        "Done: the page shows the new state.",
        "Gereed: de pagina toont de nieuwe status.",
        "Udført: siden viser den nye status.",
    ),
    "pending": (
        "Your change is being applied; this page refreshes in a moment.",
        "Uw wijziging wordt verwerkt; deze pagina wordt zo vernieuwd.",
        "Din ændring behandles; siden opdateres om et øjeblik.",
    ),
    "p_conferencing_dialout": (
        "Audio Conferencing dial-out",
        "Audiovergaderingen: uitbellen",
        "Lydmøde: udgående opkald",
    ),
    "p_conferencing_tollfree_dialin": (
        "Audio Conferencing toll-free dial-in",
        "Audiovergaderingen: gratis inbellen",
        "Lydmøde: gratis indringning",
    ),
    "p_tollfree_inbound": ("Toll-free numbers", "Gratis telefoonnummers", "Gratisnumre"),
    "k_manual_add": ("Added by hand", "Handmatig toegevoegd", "Indsat manuelt"),
    "k_recharge_succeeded": ("Recharge succeeded", "Aanvulling gelukt", "Opfyldning gennemført"),
    "k_recharge_failed": ("Recharge failed", "Aanvulling mislukt", "Opfyldning mislykkedes"),
    "k_adjustment": ("Adjustment", "Correctie", "Regulering"),
    "e_malformed": (
        "Enter an amount such as 12.50.",
        "Voer een bedrag in, zoals 12,50.",
        "Angiv et beløb som 12,50.",
    ),
    "e_negative": (
        "The amount cannot be negative.",
        "Het bedrag mag niet negatief zijn.",
        "Beløbet må ikke være negativt.",
    ),
    "e_positive": (
        "Enter an amount greater than 0.",
        "Voer een bedrag groter dan 0 in.",
        "Angiv et beløb større end 0.",
    ),
    "e_required": ("Enter an amount.", "Voer een bedrag in.", "Angiv et beløb."),
    "e_amount_for_trigger": (
        "Enter a recharge amount for this trigger.",
        "Voer een aanvulbedrag in voor dit activeringsbedrag.",
        "Angiv et opfyldningsbeløb til denne udløser.",
    ),
    "e_too_large": ("The amount is too large.", "Het bedrag is te groot.", "Beløbet er for stort."),
}

_INDEX: Final = {Lang.EN: 0, Lang.NL: 1, Lang.DA: 2}


def text(lang: Lang, key: str) -> str:
    return _STRINGS[key][_INDEX[lang]]


def negotiate(accept_language: str | None) -> Lang:
    """The best of our languages for an Accept-Language header (English if none fits)."""
    best: tuple[float, int, Lang] | None = None
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        primary = tag.strip().lower().split("-")[0]
        if primary in Lang.__members__.values() and q > 0:
            candidate = (-q, position, Lang(primary))
            if best is None or candidate < best:
                best = candidate
    return Lang.EN if best is None else best[2]


def parse_lang(value: str | None) -> Lang | None:
    try:
        return Lang(value) if value else None
    except ValueError:
        return None


def number(value: Decimal, lang: Lang, min_decimals: int = 2) -> str:
    """Grouped, with the locale's separators; every significant decimal kept."""
    exponent = value.normalize().as_tuple().exponent
    places = max(min_decimals, -exponent if isinstance(exponent, int) else 0)
    formatted = format(abs(value), f",.{places}f")  # Decimal formatting: exact
    if lang is not Lang.EN:
        formatted = formatted.replace(",", "\0").replace(".", ",").replace("\0", ".")
    return ("-" if value < 0 else "") + formatted


def money(value: Decimal | str, currency: str, lang: Lang) -> str:
    amount = number(Decimal(value), lang)
    return f"{amount} {currency}" if lang is Lang.DA else f"{currency} {amount}"


def minutes(seconds: int, lang: Lang) -> str:
    value = (Decimal(seconds) / 60).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    return number(value, lang, min_decimals=1)


def day(value: date, lang: Lang, *, year: bool = True) -> str:
    month = _MONTHS[lang][value.month - 1]
    if lang is Lang.EN:
        return f"{month} {value.day}, {value.year}" if year else f"{month} {value.day}"
    dot = "." if lang is Lang.DA else ""
    return f"{value.day}{dot} {month} {value.year}" if year else f"{value.day}{dot} {month}"


def moment(value: datetime, lang: Lang) -> str:
    """A UTC time: the day and hh:mm (Danish writes "kl. 14.05")."""
    if lang is Lang.DA:
        return f"{day(value.date(), lang)} kl. {value:%H.%M} UTC"
    return f"{day(value.date(), lang)} {value:%H:%M} UTC"


def parse_amount(value: str, lang: Lang) -> str:
    """Form input to a contract decimal string: Dutch and Danish may write a decimal comma."""
    cleaned = value.strip()
    if lang is not Lang.EN and "," in cleaned and "." not in cleaned:
        cleaned = cleaned.replace(",", ".")
    return cleaned
