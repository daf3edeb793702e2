"""The one gate every request passes before its view and after it, so no route, however and
whenever it was registered, is reached without the checks its declaration asks for.

Before the view, in this order: a request id; paths that must reach no route (doubled or
encoded slashes, a slash a route does not have); a key in the URL (400); the caller; unmatched
paths, counted per address (429 past RATELIMIT_UNMATCHED); the route's declared access (401,
403), each failure counted per address (429 past RATELIMIT_AUTH_FAILURES); the budgets that span
every route (a key's own limit, its tenant's); and the route's own limit. Flask-Limiter's check
runs right after, in its own hook, and counts the route's limit only when the gate could not
(see limits.py). After the view: the quota fields, ``Cache-Control: no-store``, the request id,
the metrics and one request line.

One hook each way, rather than one per concern: Flask calls every hook through a wrapper of its
own, a cost paid per hook and per request.
"""

from __future__ import annotations

from time import perf_counter

from flask import Flask, Response, g, request
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.routing import RequestRedirect

from .access import Declarations
from .auth import CHALLENGE, Authenticator, Caller, failure, key_in_url
from .errors import problem
from .limits import Limits, is_exempt
from .metrics import Recorder
from .proxy import UNREADABLE_CLIENT
from .requestlog import RequestLog

HTTPS_ONLY = "API keys are accepted over HTTPS only: connect through the TLS-terminating proxy."
URL_KEY = "API keys are not accepted in the URL; send an Authorization header."
UNREADABLE = "The proxy reported a client address that is not an IP address."
# A raw path holding these reaches a route only through a decoding or merging step that an edge
# rule on the path (a proxy refusing /metrics, say) would not have made: such a path is no route.
ENCODED_SLASHES = ("%2f", "%2F", "%5c", "%5C")


def _odd_path(environ: dict[str, object]) -> bool:
    path = str(environ.get("PATH_INFO", ""))
    raw = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "").partition("?")[0]
    # No id holds a NUL byte (no database's text can): such a path is no resource, in any store.
    return "//" in path or "\x00" in path or any(code in raw for code in ENCODED_SLASHES)


class Gate:
    """The service's own ``before_request`` and ``after_request``."""

    def __init__(
        self,
        app: Flask,
        authenticator: Authenticator,
        limits: Limits,
        recorder: Recorder,
        log: RequestLog,
        *,
        https_only: bool,
    ) -> None:
        self.declarations = Declarations(app)
        self.authenticator = authenticator
        self.limits = limits
        self.budgets = limits.budgets
        self.recorder = recorder
        self.log = log
        self.https_only = https_only

    def before(self) -> Response | None:
        self.log.start()
        g.started = perf_counter()
        environ = request.environ
        if UNREADABLE_CLIENT in environ:
            return problem(400, UNREADABLE)
        if environ.get("QUERY_STRING") and key_in_url(request.args):
            g.auth_failure = "key_in_url"
            return problem(400, URL_KEY)
        insecure = self.https_only and not request.is_secure
        # Plain HTTP from a peer that is not a named proxy, or a proxy that took plain HTTP from
        # its client: any key on it crossed the network in cleartext, and is not even read.
        identified = None if insecure else self.authenticator.identify(environ)
        g.caller = identified
        if request.url_rule is None or _odd_path(environ):
            return self._unmatched(identified)
        return self._admit(identified, insecure) or self._spend(identified)

    def _unmatched(self, identified: Caller | None) -> Response | None:
        refused = self.budgets.unmatched_path()
        if refused is not None:
            return refused
        if identified is None and (spent := self.budgets.failures_spent()) is not None:
            return spent
        routing = request.routing_exception
        if isinstance(routing, MethodNotAllowed) and identified is None:
            # The Allow header of a 405 would map the routes for a caller without a key.
            return self._unauthorized()
        if routing is None or isinstance(routing, RequestRedirect):
            # An odd path that routing accepted, or a redirect to a URL built from the Host header.
            return problem(404)
        return None  # Flask raises the routing error: a 404 or 405 problem

    def _admit(self, identified: Caller | None, insecure: bool) -> Response | None:
        """401 or 403 unless the route's declaration lets this caller in."""
        access = self.declarations.of(request.endpoint or "")
        if access is not None and access.public:
            return None
        if identified is None:
            if insecure:
                g.auth_failure = "insecure_transport"
                return problem(403, HTTPS_ONLY)
            return self._unauthorized()
        needed = None if access is None else access.scope(request.method)
        if access is None or (needed is not None and needed not in identified.scopes):
            return problem(403)
        return None

    def _spend(self, identified: Caller | None) -> Response | None:
        if identified is not None:
            refused = self.budgets.spanning(identified)
        else:
            refused = None if is_exempt() else self.budgets.failures_spent()
        return refused if refused is not None else self.limits.count_route()

    def _unauthorized(self) -> Response:
        g.auth_failure = failure() or "missing"
        return self.budgets.failed() or problem(401, headers=CHALLENGE)

    def after(self, response: Response) -> Response:
        self.limits.add_fields(response)
        headers = response.headers
        # Responses carry per-key data: no shared or private cache may keep them.
        headers["Cache-Control"] = "no-store"
        headers["X-Request-ID"] = g.request_id
        duration = perf_counter() - g.started
        self.recorder.record(response, duration, on_fallback=self.limits.on_fallback())
        self.log.write(response, duration)
        return response


def install_gate(
    app: Flask,
    authenticator: Authenticator,
    limits: Limits,
    recorder: Recorder,
    log: RequestLog,
    *,
    https_only: bool,
) -> Gate:
    """Register the gate's two hooks, then Flask-Limiter's: Flask runs app-level
    ``before_request`` hooks in the order they were registered, and the limiter counts per
    caller, which the gate identifies. Its ``after_request`` runs last, on the final answer."""
    gate = Gate(app, authenticator, limits, recorder, log, https_only=https_only)
    app.before_request(gate.before)
    app.after_request(gate.after)
    limits.attach(app)
    return gate
