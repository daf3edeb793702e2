"""Start the service as production does (gunicorn, two workers, limits in Redis) and prove that
the workers share one rate limit, so a deployment with N workers does not allow N times it.

Usage: python scripts/smoke_redis.py redis://localhost:6379/0   (make smoke; CI runs it
against its Redis service container). Its counters use a fresh key id and expire within the
hour; nothing else in that Redis is touched.
"""

from __future__ import annotations

import http.client
import secrets
import sys
import tempfile
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from local_service import LocalService

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint

LIMIT = 3


def get(port: int, path: str, key: str | None = None) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        # Sent as the TLS-terminating proxy sends it: production refuses a key that came in
        # over plain HTTP.
        headers = {"X-Forwarded-Proto": "https", **({"X-API-Key": key} if key else {})}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def main(storage_uri: str) -> int:
    store = redis.Redis.from_url(storage_uri, socket_timeout=2)
    try:
        store.ping()
    except redis.RedisError as error:
        # Not the URI itself: it may hold a password.
        sys.exit(f"smoke: cannot reach Redis ({type(error).__name__})")
    minted = mint(KEY_PREFIX, key_id=f"smoke-{secrets.token_hex(4)}", scopes=["items:read"])
    with tempfile.TemporaryDirectory() as scratch:
        service = LocalService(
            Path(scratch),
            minted.entry,
            tls=False,  # plain HTTP, as behind a TLS-terminating proxy
            RATELIMIT_STORAGE_URI=storage_uri,
            RATELIMIT_DEFAULT=f"{LIMIT} per hour",
            WEB_CONCURRENCY="2",
        ).start()
        try:
            answers = [get(service.port, "/v1/whoami", minted.secret) for _ in range(LIMIT + 1)]
        finally:
            service.stop()
    statuses = [code for code, _ in answers]
    counted = store.keys(f"*key:{minted.key.key_id}*")
    if statuses != [200] * LIMIT + [429] or "Retry-After" not in answers[-1][1] or not counted:
        print(f"smoke: FAILED: statuses {statuses}, {len(counted)} counters in Redis", file=sys.stderr)
        return 1
    print(f"smoke: ok: two workers shared one limit of {LIMIT} in Redis ({statuses})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "redis://localhost:6379/0"))
