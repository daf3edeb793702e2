"""Rate limits per key id (never the key) and per client network, so one client cannot starve
the others and key guessing stays slow (CWE-307, CWE-770).

Storage keys look like ``LIMITS:LIMITER/key:<key id>/...`` or ``.../addr:<address>/...``:
safe to read, and nothing in them can be turned back into a key. Answers carry the IETF
``RateLimit-Policy`` and ``RateLimit`` fields (draft-ietf-httpapi-ratelimit-headers), and
``Retry-After`` only with a 429. A key whose entry has its own ``limit=`` gets that limit
instead of RATELIMIT_DEFAULT, and its answers name that policy "key".
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RequestLimit
from limits import RateLimitItem
from limits.errors import StorageError
from limits.strategies import FixedWindowRateLimiter

from .auth import caller
from .errors import problem
from .settings import Invalid, Settings, rate_limits

View = TypeVar("View", bound=Callable[..., object])

RATE_LIMIT = "rate_limit"
EXEMPT = "rate_limit_exempt"
AUTH_FAILURES = "auth-failures"
# Fail fast when Redis does not answer, instead of holding a request for the OS timeout; storage
# errors arrive as limits' StorageError, which this module catches by name.
REDIS_OPTIONS: dict[str, str | int] = {
    "socket_connect_timeout": 1,
    "socket_timeout": 1,
    "health_check_interval": 5,
    "wrap_exceptions": True,
}

# Window ends remembered per storage key (one per client and limit); emptied when full.
WINDOWS_REMEMBERED = 10_000
# A remembered window end is read again in the window's last second: Redis reports the time to
# live in whole seconds, so a window may already have ended (and the next begun, with its own
# end) up to half a second before the end remembered for it.
WINDOW_END_MARGIN = 1.0

logger = logging.getLogger(__name__)


def limit(value: str) -> Callable[[View], View]:
    """Give one route its own limit (per key), replacing RATELIMIT_DEFAULT for it."""

    def mark(view: View) -> View:
        setattr(view, RATE_LIMIT, value)
        return view

    return mark


def exempt(view: View) -> View:
    """No rate limit at all on this route (health checks)."""
    setattr(view, EXEMPT, True)
    return view


def client_address() -> str:
    """The client as a rate-limit identity: an IPv4 address, or the /64 of an IPv6 one.

    REMOTE_ADDR is the peer, or what a trusted proxy reported (see proxy.py); never a header a
    client can set on its own. An IPv6 subscriber usually holds a whole /64 and could take a
    fresh budget with every address in it; one address also has several spellings.
    """
    text = request.remote_addr or ""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network((address, 64), strict=False))
    return str(address)


def limit_key() -> str:
    identified = caller()
    return f"key:{identified.key_id}" if identified is not None else f"addr:{client_address()}"


def default_limit(default: str, own: Mapping[str, str]) -> Callable[[], str]:
    """Flask-Limiter's default limit as a provider it calls per request: the caller's own limit
    (its entry's ``limit=``) when it has one, else RATELIMIT_DEFAULT. Flask-Limiter parses a
    default limit string on every request either way."""

    def provider() -> str:
        identified = caller()
        return default if identified is None else own.get(identified.key_id, default)

    return provider


def _fields(
    response: Response,
    policies: Sequence[tuple[str, RateLimitItem]],
    current: str,
    remaining: int,
    reset_at: float,
) -> None:
    """The IETF fields, and Retry-After when the answer is 429."""
    seconds = max(1, int(reset_at - time.time()))
    response.headers["RateLimit-Policy"] = _policy_field(tuple(policies))
    response.headers["RateLimit"] = f'"{current}";r={max(0, remaining)};t={seconds}'
    if response.status_code == 429:
        response.headers["Retry-After"] = str(seconds)


@functools.lru_cache(maxsize=256)
def _policy_field(policies: tuple[tuple[str, RateLimitItem], ...]) -> str:
    # The same few policies on every answer: rendered once each.
    return ", ".join(f'"{name}";q={item.amount};w={item.get_expiry()}' for name, item in policies)


class FailureBudget:
    """Failed authentications allowed per client address (RATELIMIT_AUTH_FAILURES).

    Each failure is counted when it happens, in one atomic step of the storage, and the
    answer follows the count: N failures at once from one address give exactly the limit's
    number of 401s, then 429s. A test before the hit would let parallel failures through.
    """

    def __init__(self, limiter: Limiter, text: str) -> None:
        self.limiter = limiter
        self.policies = _named(AUTH_FAILURES, sorted(rate_limits(text)))

    def refuse_spent(self) -> Response | None:
        """Before the request: 429 for an address that has no failure left."""
        if caller() is not None or getattr(_view(), EXEMPT, False):
            return None
        identity = [f"addr:{client_address()}", AUTH_FAILURES]
        try:
            strategy = self.limiter.limiter
            spent = [(name, item) for name, item in self.policies if not strategy.test(item, *identity)]
            return self._too_many(identity, *spent[0]) if spent else None
        except StorageError:
            logger.warning("Rate limit storage unreachable: failed authentications not checked")
            return None

    def count(self, response: Response) -> Response:
        """After the request: count a 401, and answer 429 instead when it was one too many."""
        if response.status_code != 401 or caller() is not None:
            return response
        identity = [f"addr:{client_address()}", AUTH_FAILURES]
        try:
            strategy = self.limiter.limiter
            over = [(name, item) for name, item in self.policies if not strategy.hit(item, *identity)]
            return self._too_many(identity, *over[0]) if over else response
        except StorageError:
            logger.warning("Rate limit storage unreachable: a failed authentication was not counted")
            return response

    def _too_many(self, identity: list[str], name: str, item: RateLimitItem) -> Response:
        reset_at, remaining = self.limiter.limiter.get_window_stats(item, *identity)
        answer = problem(429)
        _fields(answer, self.policies, name, remaining, reset_at)
        return answer


def _named(base: str, items: Sequence[RateLimitItem]) -> list[tuple[str, RateLimitItem]]:
    """Policy names: the limit's origin, and its window when one limit has several."""
    if len(items) == 1:
        return [(base, items[0])]
    return [(f"{base}-{item.get_expiry()}s", item) for item in items]


def _name_of(policies: Sequence[tuple[str, RateLimitItem]], item: RateLimitItem) -> str:
    return next((name for name, known in policies if known == item), policies[0][0])


def _view() -> object:
    return current_app.view_functions.get(request.endpoint or "")


class QuotaFields:
    """The IETF fields for the limits Flask-Limiter applied to this request."""

    def __init__(self, limiter: Limiter, default: str, own: Mapping[str, str]) -> None:
        self.limiter = limiter
        self.default = sorted(rate_limits(default))
        self.own = {key_id: sorted(rate_limits(text)) for key_id, text in own.items()}
        self.window_ends: dict[str, tuple[object, float, int]] = {}

    def _policies(self, applied: list[RequestLimit]) -> list[tuple[str, RateLimitItem]]:
        items = tuple(current.limit for current in applied)
        identified = caller()
        own = self.own.get(identified.key_id) if identified is not None else None
        if own is not None and all(item in own for item in items):
            base = "key"
        elif all(item in self.default for item in items):
            base = "default"
        else:
            base = request.endpoint or "route"
        return _named(base, items)

    def _window(self, current: RequestLimit) -> tuple[int, int]:
        """Remaining quota and reset time of the limit in force.

        A fixed window ends when its counter expires, and that time does not move until it has
        passed: it is read from the storage once per window, and the count on every request (one
        Redis round trip instead of two). Other strategies read both in one call already. A
        count lower than the last one seen means the counter was replaced (a new window, or a
        Redis that lost its data): its end is read again. An equal count is no sign: two
        requests in flight read the same count after both hits, and re-reading then cost a
        round trip on about every other request under load. A counter lost after a single hit
        shows its old end until the window's last second, when every end is read again.
        """
        strategy = self.limiter.limiter  # the fallback's, while Redis is away
        if not isinstance(strategy, FixedWindowRateLimiter):
            return current.remaining, current.reset_at
        storage = strategy.storage
        count = storage.get(current.key)
        known = self.window_ends.get(current.key)
        if (
            known is None
            or known[0] is not storage
            or count < known[2]
            or known[1] - WINDOW_END_MARGIN <= time.time()
        ):
            if len(self.window_ends) >= WINDOWS_REMEMBERED:
                self.window_ends.clear()
            end = storage.get_expiry(current.key)
        else:
            end = known[1]
        self.window_ends[current.key] = (storage, end, count)
        # Rounded up, as Flask-Limiter's RequestLimit.reset_at rounds it.
        return max(0, current.limit.amount - count), int(end + 1)

    def add(self, response: Response) -> Response:
        current = self.limiter.current_limit
        # Only the failure budget's 429 carries its own fields already.
        if current is None or (response.status_code == 429 and "RateLimit" in response.headers):
            return response
        policies = self._policies(self.limiter.current_limits)
        try:
            remaining, reset_at = self._window(current)
            _fields(response, policies, _name_of(policies, current.limit), remaining, reset_at)
        except StorageError:
            logger.warning("Rate limit storage unreachable: quota fields left out")
        return response


def install_limits(app: Flask, settings: Settings) -> Limiter:
    """Wire Flask-Limiter. Must run after ``install_auth`` (its check is an app-level
    ``before_request`` that needs the caller) and after the blueprints (limits and
    exemptions are declared on their views)."""
    shared = settings.shared_limits
    own = {key.key_id: key.limit for key in settings.keys if key.limit is not None}
    limiter = Limiter(
        limit_key,
        default_limits=[default_limit(settings.ratelimit_default, own)],
        headers_enabled=False,  # QuotaFields writes the IETF fields, and Retry-After only on 429
        strategy=settings.ratelimit_strategy,
        storage_uri=settings.ratelimit_storage_uri,
        storage_options=REDIS_OPTIONS if shared else {},
        # Redis down: count in this process's memory and probe Redis again, rather than
        # answer 500 or stop limiting (see the README, "Rate limits").
        in_memory_fallback_enabled=shared,
        # Flask-Limiter switches to memory once per process, on the first failed request;
        # requests already in flight meet the same storage error. Those few pass uncounted
        # (logged) instead of answering 500.
        swallow_errors=shared,
    )
    limiter.init_app(app)
    budget = FailureBudget(limiter, settings.ratelimit_auth_failures)
    fields = QuotaFields(limiter, settings.ratelimit_default, own)
    app.before_request(budget.refuse_spent)
    # after_request hooks run last-registered first: a 401 is counted, maybe made a 429 with
    # its own fields, before the generic fields are added.
    app.after_request(fields.add)
    app.after_request(budget.count)
    for endpoint, view in list(app.view_functions.items()):
        if getattr(view, EXEMPT, False):
            limiter.exempt(view)
        value = getattr(view, RATE_LIMIT, None)
        if value is not None:
            try:
                rate_limits(value)
            except Invalid as error:
                # Flask-Limiter would log and silently fall back to the default limit.
                raise ValueError(f"route {endpoint}: {error}") from None
            # The wrapper is what checks a decorated limit: it must replace the view.
            app.view_functions[endpoint] = limiter.limit(value)(cast(Callable[..., Any], view))
    return limiter
