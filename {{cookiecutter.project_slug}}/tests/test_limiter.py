"""The planned limiter answers as Flask-Limiter does: same headers, same state for views."""

from __future__ import annotations

from flask import Flask
from flask_limiter import Limiter

from {{ cookiecutter.package_name }} import limiter as planned
from {{ cookiecutter.package_name }} import limits

from .support import KeySet, bearer

EXACT = ("X-RateLimit-Limit", "X-RateLimit-Remaining")
TIMES = ("X-RateLimit-Reset", "Retry-After")  # each app's window starts when it is first hit


def test_headers_match_flask_limiters_own(make_app, keys: KeySet, monkeypatch) -> None:
    fast = make_app(RATELIMIT_DEFAULT="3 per hour").test_client()
    monkeypatch.setattr(limits, "limiter_class", lambda: Limiter)
    plain = make_app(RATELIMIT_DEFAULT="3 per hour").test_client()
    (fast_limiter,), (plain_limiter,) = (
        fast.application.extensions["limiter"],
        plain.application.extensions["limiter"],
    )
    assert (type(fast_limiter), type(plain_limiter)) == (planned.ResolvedLimiter, Limiter)
    for path, headers in (("/v1/whoami", bearer(keys.reader)), ("/v1/items", {}), ("/v1/whoami", {})):
        for _ in range(4):
            ours, theirs = fast.get(path, headers=headers), plain.get(path, headers=headers)
            assert ours.status_code == theirs.status_code
            for name in EXACT:
                assert ours.headers.get(name) == theirs.headers.get(name), (path, name)
            for name in TIMES:
                assert abs(int(ours.headers[name]) - int(theirs.headers[name])) <= 1, (path, name)


def test_a_view_sees_the_current_limit(make_app, keys: KeySet) -> None:
    app: Flask = make_app(RATELIMIT_DEFAULT="5 per minute")
    (limiter,) = app.extensions["limiter"]

    @app.get("/probe")
    def probe() -> dict[str, object]:
        current = limiter.current_limit
        return {"limit": current.limit.amount, "remaining": current.remaining}

    client = app.test_client()
    answers = [client.get("/probe", headers=bearer(keys.reader)).get_json() for _ in range(2)]
    assert answers == [{"limit": 5, "remaining": 4}, {"limit": 5, "remaining": 3}]


def test_another_flask_limiter_release_gets_flask_limiters_own_path(monkeypatch) -> None:
    monkeypatch.setattr(planned.flask_limiter, "__version__", "9.0.0")
    assert planned.limiter_class() is Limiter
