"""The base of the project's own exceptions.

Every error the project raises on purpose (``RateCardError``, ``SettingsError``,
``BrokerError`` and ``LocalKafkaError``, ``ReconcileError``, ``DemoError``, ``RangeError``,
...) subclasses :class:`RatingBaseError`, so a caller can tell "ours, with a message for the
operator" from a bug in a library or in our code. The classes keep their historical bases too
(``RateCardError``, ``SettingsError`` and ``RangeError`` are ``ValueError``s, ``BrokerError``
and ``DemoError`` ``RuntimeError``s), so every existing ``except`` clause still catches what
it caught. What happens to an unexpected exception while processing a message (a bug) is
decided in one place, :mod:`rating.error_policy`.

Not ``RatingError``: that name is the domain's value for a CDR that cannot be rated
(``rating.domain.rating.RatingError``, a result, not an exception). Pure Python: ``domain/``
imports it.
"""

from __future__ import annotations


class RatingBaseError(Exception):
    """An error of this project's own: bad configuration or input, a missing broker, ..."""
