"""Human-readable validation errors: name the field path and the problem.

Shared by the rate-card loader, ``rating rate`` and the streaming rejections, so an operator
sees the same wording (``rates[3].per_minute: ...``) wherever bad input shows up.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

_MAX_INPUT_REPR = 40
_MAX_ERRORS = 5


def format_loc(loc: Sequence[int | str]) -> str:
    """``("rates", 3, "per_minute")`` -> ``"rates[3].per_minute"``; ``()`` -> ``"(root)"``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(root)"


def _short_input(value: object) -> str:
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        if len(text) > _MAX_INPUT_REPR:
            text = text[: _MAX_INPUT_REPR - 3] + "..."
        return f" (got {text})"
    return f" (got {type(value).__name__})"


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One ``"path: message (got value)"`` line per problem.

    Missing fields say so without a value; the raw input is shown only for scalars and
    truncated, so a huge payload never ends up in a log line.
    """
    lines = []
    for err in exc.errors(include_url=False):
        got = "" if err["type"] in ("missing", "json_invalid") else _short_input(err["input"])
        lines.append(f"{format_loc(err['loc'])}: {err['msg']}{got}")
    return lines


def summarize_validation_error(exc: ValidationError) -> str:
    """The first few problems on one line, for a rejection's ``detail``."""
    lines = describe_validation_error(exc)
    more = len(lines) - _MAX_ERRORS
    text = "; ".join(lines[:_MAX_ERRORS])
    return f"{text}; and {more} more" if more > 0 else text
