"""Rate limits per key id (never the key), per tenant and per client address, so no client can
starve the others and key guessing stays slow (CWE-307, CWE-770, API4:2023).

Two layers, both in the storage RATELIMIT_STORAGE_URI names, both counted by the request gate in
one pass through Flask-Limiter's strategy in use (``Limiter.limiter``):

* each route's limit per caller: RATELIMIT_DEFAULT, or the route's own ``@limit``, per key id,
  or per address for a caller without a valid key, under the storage keys Flask-Limiter's own
  check writes. ``@limit`` and ``@exempt`` are read from the view when a request arrives, so they
  hold however and whenever the route was registered. While Flask-Limiter counts in its
  in-memory fallback, or when the storage fails, its own check counts the route's limit instead:
  it owns the fallback and the probing that brings the storage back.
* :class:`Budgets` spans every route: failed authentications and unmatched paths (404, 405) per
  address, a key's own ``limit=`` per key id, and RATELIMIT_TENANT per tenant. Each is counted in
  one atomic step of the storage when it is spent, so requests in flight together never overdraw it.

Storage keys look like ``LIMITS:LIMITER/key:<key id>/...`` or ``.../addr:<address>/...``: nothing
in them can be turned back into a key. Answers carry the IETF ``RateLimit-Policy`` and
``RateLimit`` fields (draft-ietf-httpapi-ratelimit-headers), read from the window statistics of
the strategy in use whichever check counted, and ``Retry-After`` only with a 429.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter
from limits import RateLimitItem
from limits.errors import StorageError

from .auth import Caller, caller
from .errors import problem
from .settings import Settings, rate_limits

View = TypeVar("View", bound=Callable[..., Any])

RATE_LIMIT = "rate_limit"
EXEMPT = "rate_limit_exempt"
# Fail fast when Redis does not answer, instead of holding a request for the OS timeout; storage
# errors arrive as limits' StorageError, which this module catches by name.
REDIS_OPTIONS: dict[str, str | int] = {
    "socket_connect_timeout": 1,
    "socket_timeout": 1,
    "health_check_interval": 5,
    "wrap_exceptions": True,
}
Policies = tuple[tuple[str, RateLimitItem], ...]

logger = logging.getLogger(__name__)


def limit(value: str) -> Callable[[View], View]:
    """Give one route its own limit per caller, in place of RATELIMIT_DEFAULT.

    Checked here, at import: Flask-Limiter would log a malformed limit and quietly apply the
    default instead.
    """
    rate_limits(value)

    def mark(view: View) -> View:
        setattr(view, RATE_LIMIT, value)
        return view

    return mark


def exempt(view: View) -> View:
    """No rate limit at all on this route (health checks)."""
    setattr(view, EXEMPT, True)
    return view


def _view() -> object:
    return current_app.view_functions.get(request.endpoint or "")


def is_exempt() -> bool:
    return bool(getattr(_view(), EXEMPT, False))


def client_address() -> str:
    """The client as a rate-limit identity: an IPv4 address, or the /64 of an IPv6 one.

    REMOTE_ADDR is the peer, or what a trusted proxy reported (see proxy.py); never a header a
    client can set on its own. An IPv6 subscriber usually holds a whole /64 and could take a
    fresh budget with every address in it; one address also has several spellings.
    """
    return _address_identity(request.remote_addr or "")


@functools.lru_cache(maxsize=4096)
def _address_identity(text: str) -> str:
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


def _named(base: str, items: Sequence[RateLimitItem]) -> Policies:
    """Policy names: the limit's origin, and its window when one limit has several."""
    if len(items) == 1:
        return ((base, items[0]),)
    return tuple((f"{base}-{item.get_expiry()}s", item) for item in items)


@functools.lru_cache(maxsize=256)
def _policy_field(policies: Policies) -> str:
    # The same few policies on every answer: rendered once each.
    return ", ".join(f'"{name}";q={item.amount};w={item.get_expiry()}' for name, item in policies)


def quota_fields(
    response: Response, policies: Policies, current: str, remaining: int, reset_at: float
) -> None:
    """The IETF fields, and Retry-After when the answer is 429."""
    seconds = max(1, int(reset_at - time.time()))
    headers = response.headers
    headers["RateLimit-Policy"] = _policy_field(policies)
    headers["RateLimit"] = f'"{current}";r={max(0, remaining)};t={seconds}'
    if response.status_code == 429:
        headers["Retry-After"] = str(seconds)


@dataclass(frozen=True)
class Budget:
    """One budget that spans every route, counted per identity (an address, a key id, a tenant)."""

    name: str
    policies: Policies

    @classmethod
    def of(cls, name: str, text: str) -> Budget:
        return cls(name, _named(name, sorted(rate_limits(text))))


class Budgets:
    """The budgets beside Flask-Limiter's route limits, spent through its strategy in use
    (``Limiter.limiter``: the configured storage, or the in-memory fallback while it is down)."""

    def __init__(self, limiter: Limiter, settings: Settings) -> None:
        self.limiter = limiter
        self.failures = Budget.of("auth-failures", settings.ratelimit_auth_failures)
        self.unmatched = Budget.of("unmatched", settings.ratelimit_unmatched)
        self.tenant = (
            None if settings.ratelimit_tenant is None else Budget.of("tenant", settings.ratelimit_tenant)
        )
        self.own = {key.key_id: Budget.of("key", key.limit) for key in settings.keys if key.limit is not None}

    def _spend(self, budget: Budget, identity: str, *, test: bool = False) -> Response | None:
        """429 when ``identity`` has no more of ``budget``; spends one unless ``test``."""
        try:
            strategy = self.limiter.limiter
            check = strategy.test if test else strategy.hit
            for name, item in budget.policies:
                if not check(item, identity, budget.name):
                    reset_at, remaining = strategy.get_window_stats(item, identity, budget.name)
                    answer = problem(429)
                    quota_fields(answer, budget.policies, name, remaining, reset_at)
                    return answer
        except StorageError:
            logger.warning("Rate limit storage unreachable: the %s budget was not counted", budget.name)
        return None

    def failed(self) -> Response | None:
        """A failed authentication, counted now: 429 instead of 401 when it was one too many."""
        identity = f"addr:{client_address()}"
        refused = self._spend(self.failures, identity)
        if refused is None:
            g.budgets = [(self.failures, identity)]
        return refused

    def failures_spent(self) -> Response | None:
        """429 for a caller without a valid key from an address that has no failure left."""
        return self._spend(self.failures, f"addr:{client_address()}", test=True)

    def unmatched_path(self) -> Response | None:
        """A request that matched no route (404, 405), counted per address."""
        return self._spend(self.unmatched, f"addr:{client_address()}")

    def spanning(self, identified: Caller) -> Response | None:
        """The caller's own key budget and its tenant's, across every route; each one spent is
        left on ``g`` for the quota fields."""
        spent = []
        own = self.own.get(identified.key_id)
        if own is not None:
            spent.append((own, f"key:{identified.key_id}"))
        if self.tenant is not None:
            spent.append((self.tenant, f"tenant:{identified.tenant}"))
        for budget, identity in spent:
            refused = self._spend(budget, identity)
            if refused is not None:
                return refused
        g.budgets = spent
        return None

    def states(self) -> Iterator[tuple[Policies, list[tuple[int, str, float]]]]:
        """The budgets this request spent: their policies, and what each has left and when it
        resets."""
        strategy = self.limiter.limiter
        for budget, identity in g.get("budgets", ()):
            states = []
            for name, item in budget.policies:
                reset_at, left = strategy.get_window_stats(item, identity, budget.name)
                states.append((left, name, reset_at))
            yield budget.policies, states


class RouteLimits:
    """What Flask-Limiter applies to each route: the route's own ``@limit`` or the default."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.default_items = frozenset(rate_limits(default))
        # One budget per route and limit text: bounded by the code, never by what clients send.
        self.budgets: dict[tuple[str, str], Budget] = {}

    def provider(self) -> str:
        # Called by Flask-Limiter for every request, with the request in context.
        value: str = getattr(_view(), RATE_LIMIT, self.default)
        return value

    def budget(self) -> Budget | None:
        """This request's route limit as a budget (None when the route is exempt), scoped by the
        endpoint as Flask-Limiter scopes a route's limits: the same counters either way."""
        view = _view()
        if getattr(view, EXEMPT, False):
            return None
        endpoint = request.endpoint or ""
        text: str = getattr(view, RATE_LIMIT, self.default)
        known = self.budgets.get((endpoint, text))
        if known is None:
            items = sorted(rate_limits(text))
            base = "default" if all(item in self.default_items for item in items) else endpoint
            known = self.budgets[(endpoint, text)] = Budget(endpoint, _named(base, items))
        return known


class Limits:
    """Everything rate limiting hands the request gate: the limiter, the budgets, the fields."""

    def __init__(self, limiter: Limiter, routes: RouteLimits, budgets: Budgets) -> None:
        self.limiter = limiter
        self.routes = routes
        self.budgets = budgets
        self.primary: object = None

    def attach(self, app: Flask) -> None:
        """Flask-Limiter's own hooks; from then on, its strategy in use is the configured one."""
        self.limiter.request_filter(counted)
        self.limiter.init_app(app)
        self.primary = self.limiter.limiter
        app.extensions["limits"] = self

    def count_route(self) -> Response | None:
        """Spend the route's limit for this caller, 429 when it is spent.

        Flask-Limiter's own check resolves every limit of the route anew on each request (its
        blueprint and exemption lookups, a parse of the limit) and costs more than the rest of
        the gate together; here a route's limit is worked out once. Left to that check (which
        then counts, falls back and probes the storage as documented): a request while the
        fallback counts, and one that met a storage error here.
        """
        route = self.routes.budget()
        if route is None:
            g.route_counted = True
            return None
        identity = limit_key()
        # The route's policy first in the quota fields, read after the view from whichever
        # strategy counted it: this one, or Flask-Limiter's check with the same storage keys.
        g.budgets = [(route, identity), *g.get("budgets", ())]
        if self.on_fallback():
            return None
        strategy = self.limiter.limiter
        try:
            # In order, up to the first one spent, as Flask-Limiter stops at the first breach.
            within = all(strategy.hit(item, identity, route.name) for _, item in route.policies)
        except StorageError:
            return None
        g.route_counted = True
        # The fields of this 429 are added after the view, with every budget this request spent.
        return None if within else problem(429)

    def add_fields(self, response: Response) -> None:
        """The IETF fields: every policy that applied to this request, and the one with the least
        left; unless a budget's 429 carries its own."""
        if response.status_code == 429 and "RateLimit" in response.headers:
            return
        policies: Policies = ()
        least: tuple[int, str, float] | None = None
        try:
            for budget_policies, states in self.budgets.states():
                policies += budget_policies
                least = min(least, *states) if least is not None else min(states)
            if least is not None:
                quota_fields(response, policies, least[1], least[0], least[2])
        except StorageError:
            logger.warning("Rate limit storage unreachable: quota fields left out")

    def on_fallback(self) -> bool:
        """True while Flask-Limiter counts in this process's memory because its storage failed:
        ``Limiter.limiter`` is then the fallback's strategy, not the one configured."""
        return self.limiter.limiter is not self.primary


def counted() -> bool:
    """Flask-Limiter's request filter: True when the gate has counted this request's route limit
    (or found the route exempt), so that its own check does not count it a second time."""
    return bool(g.get("route_counted", False))


def prepare_limits(settings: Settings) -> Limits:
    """Flask-Limiter, configured but not yet attached: the request gate's hooks come first
    (``install_gate`` attaches it)."""
    shared = settings.shared_limits
    routes = RouteLimits(settings.ratelimit_default)
    limiter = Limiter(
        limit_key,
        default_limits=[routes.provider],
        default_limits_exempt_when=is_exempt,
        headers_enabled=False,  # the gate writes the IETF fields, and Retry-After only on 429
        strategy=settings.ratelimit_strategy,
        storage_uri=settings.ratelimit_storage_uri,
        storage_options=REDIS_OPTIONS if shared else {},
        # Redis down: count in this process's memory and probe Redis again, rather than
        # answer 500 or stop limiting (see docs/operations.md, "Rate limits").
        in_memory_fallback_enabled=shared,
        # Flask-Limiter switches to memory once per process, on the first failed request;
        # requests already in flight meet the same storage error. Those few pass uncounted
        # (logged) instead of answering 500.
        swallow_errors=shared,
    )
    return Limits(limiter, routes, Budgets(limiter, settings))
