"""Admin sessions: an HMAC-signed, expiring cookie carrying a CSRF token; sign-in throttling.

The signing key is derived from ``RATING_ADMIN_TOKEN`` (so changing the token ends every
session, and every worker of a deployment accepts every other's cookies). The cookie holds
no secret: only its expiry, a random CSRF token and a nonce. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

COOKIE: Final = "rating_admin"
LANG_COOKIE: Final = "rating_lang"
SESSION_SECONDS: Final = 8 * 3600

#: Failed sign-ins from one client: the n-th waits min(BASE * 2**(n-1), MAX) seconds.
THROTTLE_BASE_SECONDS: Final = 0.5
THROTTLE_MAX_SECONDS: Final = 8.0
#: A client's failures are forgotten after this long without another failure.
THROTTLE_WINDOW_SECONDS: Final = 15 * 60
#: Bound the memory one flood of clients can take.
THROTTLE_MAX_CLIENTS: Final = 10_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    expires: int


class Sessions:
    def __init__(self, admin_token: str, lifetime: int = SESSION_SECONDS) -> None:
        self._key = hmac.new(admin_token.encode(), b"rating-admin-session/v1", "sha256").digest()
        self._token_digest = hashlib.sha256(admin_token.encode()).digest()
        self.lifetime = lifetime

    def token_ok(self, given: str) -> bool:
        # Digests first: equal lengths, so compare_digest's time does not depend on the input.
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._token_digest)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), "sha256").digest())

    def issue(self, now: float | None = None) -> tuple[str, Session]:
        expires = int(now if now is not None else time.time()) + self.lifetime
        session = Session(csrf=secrets.token_urlsafe(24), expires=expires)
        body = {"c": session.csrf, "e": expires, "n": secrets.token_urlsafe(8)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}", session

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        if not cookie or "." not in cookie:
            return None
        payload, _, sig = cookie.partition(".")
        if not hmac.compare_digest(sig.encode(), self._sign(payload).encode()):
            return None
        try:
            body = json.loads(_unb64(payload))
            session = Session(csrf=str(body["c"]), expires=int(body["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= (now if now is not None else time.time()):
            return None
        return session

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(session.csrf.encode(), given.encode())


class Throttle:
    """Per-client failed sign-ins, to slow guessing down (bounded, forgets over time)."""

    def __init__(self) -> None:
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def _prune(self, now: float) -> None:
        while self._failures:
            client, (_, at) = next(iter(self._failures.items()))
            if now - at < THROTTLE_WINDOW_SECONDS and len(self._failures) <= THROTTLE_MAX_CLIENTS:
                break
            del self._failures[client]

    def failed(self, client: str, now: float | None = None) -> float:
        """Record a failure; the delay (seconds) to wait before answering it."""
        now = now if now is not None else time.monotonic()
        self._prune(now)
        count = self._failures.pop(client, (0, now))[0] + 1
        self._failures[client] = (count, now)  # most recent last
        delay: float = THROTTLE_BASE_SECONDS * 2.0 ** min(count - 1, 16)
        return min(delay, THROTTLE_MAX_SECONDS)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
