"""Flask-Limiter, with what does not change between requests worked out once.

Per request, Flask-Limiter resolves again which limits apply to the endpoint (parsing the
limit strings, walking exemptions and blueprints), builds its request state, and reads the
counter back from the storage for its headers: together more time than a bare Flask request.
:class:`ResolvedLimiter` keeps Flask-Limiter as the rate limiter (its configuration, storage
URIs, strategies, decorators, ``current_limit``, fallback and error handling) and does that
work once per endpoint and method, using Flask-Limiter's own LimitManager, strategy and
storage objects. It reads some of Flask-Limiter's internals, so it is used only with the
release it was written against; any other release gets Flask-Limiter's own path, unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import flask_limiter
from flask import Flask, Response, current_app, request
from flask.globals import request_ctx
from flask_limiter import HeaderNames, Limiter, RateLimitExceeded, RequestLimit
from flask_limiter.util import get_qualified_name
from limits import RateLimitItem, WindowStats
from limits.strategies import FixedWindowRateLimiter
from werkzeug.http import http_date, parse_date

from .headers import add_ready

if TYPE_CHECKING:
    from flask_limiter._limits import RuntimeLimit

# The Flask-Limiter release whose internals ResolvedLimiter reads (its request context,
# LimitManager.resolve_limits, the attributes named in _check_request_limit and _headers).
WRITTEN_FOR = "4.1."
# Where Flask-Limiter keeps its per-request state, on Flask's request context.
CONTEXT = "_limiter_request_context"

logger = logging.getLogger(__name__)


def limiter_class() -> type[Limiter]:
    """ResolvedLimiter for the release it was written for; Flask-Limiter itself otherwise."""
    if flask_limiter.__version__.startswith(WRITTEN_FOR):
        return ResolvedLimiter
    logger.warning(
        "Flask-Limiter %s: rate limits run on Flask-Limiter's own path, slower (see limiter.py)",
        flask_limiter.__version__,
    )
    return Limiter


def _request_state() -> dict[str, Any]:
    """The attributes of Flask's request context object, reached through its proxy once."""
    state: dict[str, Any] = request_ctx._get_current_object().__dict__  # type: ignore[attr-defined]
    return state


@dataclass(frozen=True, slots=True)
class Plan:
    """The limits Flask-Limiter selects for one endpoint and method, in the order it checks
    them, each with its storage scope; ``defaults`` are those it marks as seen."""

    defaults: tuple[RuntimeLimit, ...]
    checks: tuple[tuple[RuntimeLimit, str], ...]


# A limit checked by the planned path: its storage arguments, its count and storage key
# (fixed window, else None), and whether it was breached.
Entry = tuple["RuntimeLimit", list[str], int | None, str | None, bool]


@dataclass(slots=True)
class Tally:
    """What the planned check did in one request: each limit checked, with its storage
    arguments, its count (fixed window) and whether it was breached; the deductions to make
    after the response. Flask-Limiter's own request context is built from it only when asked
    for (``current_limit``, a limit checked inside the view, a breach)."""

    plan: Plan
    checked: list[Entry]
    deductions: dict[RuntimeLimit, list[str]]


class CountedLimit(RequestLimit):
    """A fixed-window limit whose counter came back from the hit itself: its headers need only
    the window's expiry from the storage, not a second read of the counter."""

    def __init__(
        self, extension: Limiter, item: RateLimitItem, args: list[str], shared: bool, count: int
    ) -> None:
        super().__init__(extension, item, args, count > item.amount, shared)
        self.count = count
        self.known: WindowStats | None = None

    @property
    def window(self) -> WindowStats:
        if self.known is None:
            remaining = max(0, self.limit.amount - self.count)
            # The limiter's storage now: its in-memory fallback if the storage just failed.
            self.known = WindowStats(self.limiter.storage.get_expiry(self.key), remaining)
        return self.known


class ResolvedLimiter(Limiter):
    """Flask-Limiter, checking each request against a plan resolved once per endpoint and method.

    The plan is what Flask-Limiter's LimitManager selects for the endpoint; the checks run on
    Flask-Limiter's own strategy and storage; the request state Flask-Limiter keeps
    (``current_limit``, deductions) is built from the tally only when something asks for it.
    A storage outage, meta limits, request filters and limits checked inside a view take
    Flask-Limiter's own path. Routes, exemptions and limits must be declared before the first
    request, as Flask requires for routes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plans: dict[tuple[str, str, bool], Plan | None] = {}
        self.tally_key = f"_resolved_limiter_tally_{id(self)}"
        self.header_names: tuple[str, ...] = ()

    def init_app(self, app: Flask) -> None:
        # Flask-Limiter registers its request hooks once per app, guarded by this set: its
        # after-request hook reads the counter back and sets each header through Werkzeug's
        # checks. Holding the place first leaves the hooks to this class.
        app.extensions.setdefault("limiter", set()).add(self)
        hooks = len(app.after_request_funcs.get(None, ()))
        super().init_app(app)
        if len(app.after_request_funcs.get(None, ())) != hooks:
            raise RuntimeError("Flask-Limiter registered its own hooks: ResolvedLimiter needs updating")
        if self.initialized:
            # Resolved by init_app from the arguments and app config; looked up once here.
            order = (HeaderNames.LIMIT, HeaderNames.REMAINING, HeaderNames.RESET, HeaderNames.RETRY_AFTER)
            self.header_names = tuple(self._header_mapping[name] for name in order)
            # No teardown hook: the limiter's context lives on Flask's request context, which
            # is dropped after each request anyway.
            app.before_request(self._check_request_limit)
            app.after_request(self._inject_headers)

    @property
    def context(self) -> Any:
        """Flask-Limiter's per-request state, built from this request's tally on first use."""
        state = _request_state()
        contexts = state.get(CONTEXT)
        context = super().context if contexts is None else contexts[self]
        tally = state.pop(self.tally_key, None)
        if tally is not None:
            context.seen_limits.update(tally.plan.defaults)
            context.conditional_deductions.update(tally.deductions)
            context.view_rate_limits = [self._request_limit(entry) for entry in tally.checked]
            context.view_rate_limit = self._header_limit(tally.checked, context.view_rate_limits)
        return context

    def _check_request_limit(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        state = _request_state()
        endpoint = self.identify_request()
        plan = None
        # Flask-Limiter's own path for limits checked inside a view, during a storage outage,
        # and for a second check in the same request.
        started = CONTEXT in state or self.tally_key in state
        if callable_name is None and in_middleware and endpoint and not self._storage_dead and not started:
            key = (endpoint, request.method, self.limit_manager.has_hints(endpoint))
            plan = (
                self.plans[key] if key in self.plans else self.plans.setdefault(key, self._resolve(endpoint))
            )
        if plan is None:
            # Flask-Limiter's own path; its self.context first takes in what a tally recorded.
            super()._check_request_limit(callable_name, in_middleware)
            return
        tally = state[self.tally_key] = Tally(plan, [], {})
        try:
            self._evaluate(tally)
        except RateLimitExceeded:
            raise
        except Exception:
            if not self._storage_failed("Failed to rate limit. Swallowing error"):
                raise
            if self._storage_dead:  # start again on the in-memory fallback, as Flask-Limiter does
                state.pop(self.tally_key, None)
                super()._check_request_limit(callable_name, in_middleware)
            else:  # swallowed: no headers, as Flask-Limiter sets none after a failed check
                tally.checked.clear()

    def _storage_failed(self, message: str) -> bool:
        """Flask-Limiter's answer to a storage error: switch to the in-memory fallback, or log
        and let the request through when errors are swallowed. False: raise it."""
        if self._in_memory_fallback_enabled and not self._storage_dead:
            self.logger.warning("Rate limit storage unreachable - falling back to in-memory storage")
            self._storage_dead = True
            return True
        if self._swallow_errors:
            self.logger.exception(message)
            return True
        return False

    def _resolve(self, endpoint: str) -> Plan | None:
        """What Flask-Limiter's before-request check selects for this endpoint and method."""
        if self._request_filters or self._meta_limits or endpoint.split(".")[-1] == "static":
            return None
        view = current_app.view_functions.get(endpoint)
        name = get_qualified_name(view) if view else ""
        marked = name in self._marked_for_limiting or self.limit_manager.has_hints(endpoint)
        defaults, decorated = self.limit_manager.resolve_limits(
            current_app, endpoint, request.blueprint, name, True, marked
        )
        chosen = sorted([*dict.fromkeys(defaults), *decorated], key=lambda lim: lim.limit)
        if any(lim.meta_limits or callable(lim.scope) for lim in chosen):
            return None
        method = request.method
        checks = tuple((lim, lim.scope_for(endpoint, method)) for lim in chosen if not lim.method_exempt)
        return Plan(tuple(defaults), checks)

    def _evaluate(self, tally: Tally) -> None:
        strategy = self.limiter
        counted = type(strategy) is FixedWindowRateLimiter
        for lim, scope in tally.plan.checks:
            if lim.exempt_when is not None and lim.exempt_when():
                continue
            key = lim.key_func()
            if not key:
                self.logger.error(f"Skipping limit: {lim.limit}. Empty value found in parameters.")
                continue
            args = [self._key_prefix, key, scope] if self._key_prefix else [key, scope]
            cost = lim.deduction_amount
            count = storage_key = None
            if lim.deduct_when is not None:
                tally.deductions[lim] = args
                breached = not strategy.test(lim.limit, *args, cost=cost)
            elif counted:
                # FixedWindowRateLimiter.hit is this same incr, with the count thrown away.
                storage_key = lim.limit.key_for(*args)
                count = strategy.storage.incr(storage_key, lim.limit.get_expiry(), amount=cost)
                breached = count > lim.limit.amount
            else:
                breached = not strategy.hit(lim.limit, *args, cost=cost)
            tally.checked.append((lim, args, count, storage_key, breached))
            if breached:
                self.logger.info("ratelimit %s (%s) exceeded at endpoint: %s", lim.limit, key, scope)
                if self._fail_on_first_breach:
                    break
        if any(entry[4] for entry in tally.checked):
            self._breach(tally.checked)

    def _request_limit(self, entry: Entry) -> RequestLimit:
        lim, args, count, _, breached = entry
        if count is None:
            return RequestLimit(self, lim.limit, args, breached, lim.shared)
        return CountedLimit(self, lim.limit, args, lim.shared, count)

    @staticmethod
    def _header_limit(checked: list[Entry], limits: list[RequestLimit]) -> RequestLimit | None:
        """Flask-Limiter's choice: the last breached limit, else the first one not shared."""
        breached = [current for entry, current in zip(checked, limits, strict=True) if entry[4]]
        if breached:
            return breached[-1]
        return next((current for current in limits if not current.shared), limits[0] if limits else None)

    def _breach(self, checked: list[Entry]) -> None:
        limits = self.context.view_rate_limits  # built now: callbacks receive Flask-Limiter's objects
        failed = [(entry[0], current) for entry, current in zip(checked, limits, strict=True) if entry[4]]
        response = None
        for lim, current in failed:
            for callback in dict.fromkeys([self._on_breach, lim.on_breach]):
                if callback is None:
                    continue
                try:
                    answer = callback(current)
                except Exception:
                    if not self._swallow_errors:
                        raise
                    self.logger.exception("on_breach callback failed")
                    continue
                if isinstance(answer, Response):
                    response = answer
        raise RateLimitExceeded(min(failed, key=lambda pair: pair[0].limit)[0], response=response)

    def _inject_headers(self, response: Response) -> Response:
        """Flask-Limiter's after-request work: conditional deductions, then the headers."""
        deductions, current = self._outcome()
        for lim, args in deductions.items():
            if lim.deduct_when is not None and lim.deduct_when(response):
                try:
                    self.limiter.hit(lim.limit, *args, cost=lim.deduction_amount)
                except Exception:
                    if not self._swallow_errors:
                        raise
                    self.logger.exception("Failed to deduct rate limit. Swallowing error")
        if current is None or not (self.enabled and self._headers_enabled):
            return response
        existing = response.headers.get("Retry-After")
        try:
            values = self._headers(current, existing)
        except Exception:
            if not self._storage_failed("Failed to update rate limit headers. Swallowing error"):
                raise
            return self._inject_headers(response) if self._storage_dead else response
        limit, remaining, reset, retry = self.header_names
        ready = [(limit, values[0]), (remaining, values[1]), (reset, values[2])]
        # Flask-Limiter adds its headers; Retry-After replaces one already set.
        if existing is None:
            ready.append((retry, values[3]))
        else:
            response.headers.set(retry, values[3])
        add_ready(response, ready)
        return response

    def _outcome(self) -> tuple[dict[RuntimeLimit, list[str]], RequestLimit | Entry | None]:
        """The deductions to make and the limit for the headers."""
        tally = _request_state().get(self.tally_key)
        if tally is None:
            context = self.context
            return context.conditional_deductions, context.view_rate_limit
        # Nobody asked for Flask-Limiter's context: the headers come from the tally itself.
        header = next((entry for entry in tally.checked if not entry[0].shared), None)
        if header is None and tally.checked:
            header = tally.checked[0]
        return tally.deductions, header

    def _figures(self, current: RequestLimit | Entry) -> tuple[int, int, int]:
        """Limit, remaining and reset time, as RequestLimit computes them."""
        if isinstance(current, RequestLimit):
            return current.limit.amount, current.remaining, current.reset_at
        lim, _, count, storage_key, _ = current
        if count is None or storage_key is None:
            return self._figures(self._request_limit(current))
        # The count came back from the hit: only the window's end is read from the storage.
        reset_at = int(self.limiter.storage.get_expiry(storage_key) + 1)
        return lim.limit.amount, max(0, lim.limit.amount - count), reset_at

    def _headers(self, current: RequestLimit | Entry, retry_after: str | None) -> tuple[str, str, str, str]:
        amount, remaining, reset_at = self._figures(current)
        later = reset_at
        if retry_after is not None:  # a Retry-After already on the response wins when later
            parsed = parse_date(retry_after)
            at = time.time() + int(retry_after) if parsed is None else time.mktime(parsed.timetuple())
            later = max(int(at), reset_at)
        delta = str(int(later - time.time()))
        retry = http_date(later) if self._retry_after == "http-date" else delta
        return str(amount), str(remaining), str(reset_at), retry
