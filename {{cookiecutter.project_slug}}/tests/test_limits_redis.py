"""Rate limits through a real gunicorn with 4 workers and a real redis-server.

What a unit test cannot show: that every worker counts against one shared limit, what
the storage holds, and what clients meet while Redis is down and after it returns.
Limits are per hour or per day, so no window ends during a burst.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey

from .support import KeySet, RedisServer, Server, bearer, eventually

pytestmark = pytest.mark.slow

# Test-only access lines name the worker process that answered each request.
WORKERS = (
    "--workers",
    "4",
    "--access-logfile",
    "-",
    "--access-logformat",
    "worker=%(p)s status=%(s)s",
)
ACCESS_LINE = re.compile(r"worker=<?(\d+)>? status=(\d+)")
FALLBACK_WARNING = "Rate limit storage unreachable - falling back to in-memory storage"
# Redis has 1 s connect and read timeouts: a request waits for at most one failed call
# and one probe of the storage, never for a client-side retry with back-off.
MAX_SECONDS = 3.5


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> dict[str, object]:
        value: dict[str, object] = json.loads(self.body)
        return value


def call(
    server: Server,
    context,
    path: str = "/v1/whoami",
    key: MintedKey | None = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> Answer:
    sent = {**(bearer(key) if key is not None else {}), **(headers or {})}
    request = urllib.request.Request(server.url + path, data=body, headers=sent, method=method)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, context=context, timeout=15) as response:
            return Answer(
                response.status, dict(response.headers), response.read(), time.monotonic() - started
            )
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read(), time.monotonic() - started)


def burst(requests: int, send: Callable[[], Answer]) -> list[Answer]:
    """``requests`` calls at once, each on its own connection (so the workers share them)."""
    with ThreadPoolExecutor(max_workers=requests) as pool:
        futures = [pool.submit(send) for _ in range(requests)]
        return [future.result() for future in futures]


def waves(count: int, size: int, send: Callable[[], Answer]) -> list[Answer]:
    """Bursts a little apart: gunicorn hands a single burst mostly to one worker."""
    answers: list[Answer] = []
    for _ in range(count):
        answers += burst(size, send)
        time.sleep(0.2)
    return answers


def spread(server: Server, size: int, send: Callable[[], Answer], *, at_least: int) -> list[Answer]:
    """Waves of ``size`` requests, ``at_least`` in all, and more until two workers have answered
    some: the kernel decides which worker accepts a connection, and on a loaded machine one
    worker can take every connection of several waves."""
    answers: list[Answer] = []
    deadline = time.monotonic() + 30
    while len(answers) < at_least or (len(served(server)) < 2 and time.monotonic() < deadline):
        answers += waves(1, size, send)
    return answers


def statuses(answers: list[Answer]) -> Counter[int]:
    return Counter(answer.status for answer in answers)


def served(server: Server, since: int = 0) -> dict[str, Counter[int]]:
    """Statuses per worker process, from the access lines written after offset ``since``."""
    workers: dict[str, Counter[int]] = {}
    for pid, status in ACCESS_LINE.findall(server.logs()[since:]):
        workers.setdefault(pid, Counter())[int(status)] += 1
    return workers


def _bulk(reply: bytes, at: int) -> tuple[bytes | None, int]:
    end = reply.index(b"\r\n", at)
    length = int(reply[at + 1 : end])
    if length < 0:
        return None, end + 2
    return reply[end + 2 : end + 2 + length], end + 4 + length


def redis_keys(redis: RedisServer) -> list[bytes]:
    reply = redis.command(b"KEYS *")
    assert reply.startswith(b"*"), reply
    end = reply.index(b"\r\n")
    keys, at = [], end + 2
    for _ in range(int(reply[1:end])):
        key, at = _bulk(reply, at)
        assert key is not None
        keys.append(key)
    return keys


def redis_count(redis: RedisServer, fragment: bytes) -> int:
    """The counter of the one storage key containing ``fragment`` (0 when there is none)."""
    matching = [key for key in redis_keys(redis) if fragment in key]
    assert len(matching) <= 1, matching
    if not matching:
        return 0
    reply = redis.command(b"GET " + matching[0])
    value, _ = _bulk(reply, 0)
    return int(value or 0)


def test_four_workers_on_redis_share_one_limit(
    start_server: Callable[..., Server], redis_server: RedisServer, keys: KeySet, client_context
) -> None:
    server = start_server(*WORKERS, RATELIMIT_STORAGE_URI=redis_server.uri, RATELIMIT_DEFAULT="15 per hour")
    answers = spread(server, 20, lambda: call(server, client_context, key=keys.reader), at_least=60)
    assert statuses(answers) == {200: 15, 429: len(answers) - 15}
    assert redis_count(redis_server, b"key:reader/") == len(answers)
    # Several workers answered, and together they let exactly 15 through.
    workers = served(server)
    assert len(workers) >= 2, workers
    assert sum(counts[200] for counts in workers.values()) == 15


def test_memory_storage_with_four_workers_multiplies_the_limit(
    start_server: Callable[..., Server], keys: KeySet, client_context
) -> None:
    """Why Redis is needed: each worker counts alone (APP_ENV=test only warns about it)."""
    server = start_server(*WORKERS, RATELIMIT_STORAGE_URI="memory://", RATELIMIT_DEFAULT="15 per hour")
    answers = spread(server, 20, lambda: call(server, client_context, key=keys.reader), at_least=60)
    workers = served(server)
    assert len(workers) >= 2, workers
    for counts in workers.values():
        assert counts[200] == min(15, counts.total())
    assert statuses(answers)[200] > 15
    assert "multiplies every rate limit by 4" in server.logs()


def test_exhausting_one_key_leaves_another_key_untouched(
    start_server: Callable[..., Server], redis_server: RedisServer, keys: KeySet, client_context
) -> None:
    server = start_server(*WORKERS, RATELIMIT_STORAGE_URI=redis_server.uri, RATELIMIT_DEFAULT="5 per hour")
    assert statuses(burst(12, lambda: call(server, client_context, key=keys.reader))) == {200: 5, 429: 7}
    assert statuses(burst(12, lambda: call(server, client_context, key=keys.writer))) == {200: 5, 429: 7}
    assert call(server, client_context, key=keys.reader).status == 429


def test_requests_without_a_valid_key_are_limited_per_address(
    start_server: Callable[..., Server], redis_server: RedisServer, keys: KeySet, client_context
) -> None:
    server = start_server(
        *WORKERS,
        RATELIMIT_STORAGE_URI=redis_server.uri,
        RATELIMIT_DEFAULT="1000 per hour",
        RATELIMIT_AUTH_FAILURES="6 per hour",
    )
    answers = burst(10, lambda: call(server, client_context))
    assert statuses(answers) == {401: 6, 429: 4}
    assert redis_count(redis_server, b"addr:127.0.0.1/auth-failures") == 10
    # The valid key from the same address is counted on its own.
    assert call(server, client_context, key=keys.reader).status == 200


def test_parallel_failed_authentications_get_exactly_the_limit_of_401s(
    start_server: Callable[..., Server], redis_server: RedisServer, keys: KeySet, client_context
) -> None:
    """Counted when they happen, in one atomic step of Redis: never more 401s than the limit,
    however many arrive at once and whichever of the two workers answers them (which one does is
    the kernel's choice, so it is not asserted)."""
    server = start_server(
        *WORKERS,
        RATELIMIT_STORAGE_URI=redis_server.uri,
        RATELIMIT_DEFAULT="1000 per hour",
        RATELIMIT_AUTH_FAILURES="20 per hour",
    )
    answers = burst(60, lambda: call(server, client_context, key=keys.unconfigured))
    assert statuses(answers) == {401: 20, 429: 40}


def test_failed_authentications_block_keyless_requests_but_not_valid_keys(
    start_server: Callable[..., Server], redis_server: RedisServer, keys: KeySet, client_context
) -> None:
    server = start_server(
        *WORKERS,
        RATELIMIT_STORAGE_URI=redis_server.uri,
        RATELIMIT_DEFAULT="1000 per hour",
        RATELIMIT_AUTH_FAILURES="4 per hour",
    )
    # One after the other: a failure is counted once its 401 is known.
    failures = [
        call(server, client_context, key=keys.unconfigured),
        call(server, client_context, key=keys.expired),
        call(server, client_context, headers={"Authorization": f"Bearer {KEY_PREFIX}_not-a-key"}),
        call(server, client_context),
    ]
    assert [answer.status for answer in failures] == [401, 401, 401, 401]
    assert call(server, client_context, key=keys.unconfigured).status == 429
    assert call(server, client_context).status == 429
    assert call(server, client_context, "/v1/items").status == 429
    assert call(server, client_context, key=keys.reader).status == 200
    assert call(server, client_context, "/v1/items", key=keys.reader).status == 200


def test_healthz_is_never_limited(
    start_server: Callable[..., Server], redis_server: RedisServer, client_context
) -> None:
    server = start_server(
        *WORKERS,
        RATELIMIT_STORAGE_URI=redis_server.uri,
        RATELIMIT_DEFAULT="2 per hour",
        RATELIMIT_AUTH_FAILURES="1 per hour",
    )
    assert [call(server, client_context).status for _ in range(3)] == [401, 429, 429]
    answers = burst(30, lambda: call(server, client_context, "/healthz"))
    assert statuses(answers) == {200: 30}
    assert not any("RateLimit" in answer.headers for answer in answers)
    assert not [key for key in redis_keys(redis_server) if b"health" in key]


def test_limit_storage_holds_key_ids_never_keys(
    start_server: Callable[..., Server], redis_server: RedisServer, keys: KeySet, client_context
) -> None:
    server = start_server(*WORKERS, RATELIMIT_STORAGE_URI=redis_server.uri)
    presented = (keys.reader, keys.writer, keys.other_tenant, keys.expired, keys.unconfigured)
    for key in presented:
        call(server, client_context, key=key)
        call(server, client_context, "/v1/items", key=key)
        call(server, client_context, "/v1/items", key=key, headers={"X-API-Key": key.secret})
    stored_keys = redis_keys(redis_server)
    # LIMITS:LIMITER/<who>/<scope>/<limit>: who is a key id or the client address, nothing else.
    assert {key.split(b"/")[2] for key in stored_keys} >= {b"auth-failures"}
    assert {key.split(b"/")[1] for key in stored_keys} == {
        b"key:reader",
        b"key:writer",
        b"key:other",
        b"addr:127.0.0.1",
    }
    stored = b"\n".join(stored_keys)
    for key in presented:
        secret = key.secret.encode()
        fragments = {secret[i : i + 12] for i in range(len(secret) - 11)}
        assert not [fragment for fragment in fragments if fragment in stored]


def test_rate_limited_answer_is_problem_json_with_retry_after_and_quota_headers(
    start_server: Callable[..., Server], redis_server: RedisServer, keys: KeySet, client_context
) -> None:
    server = start_server(*WORKERS, RATELIMIT_STORAGE_URI=redis_server.uri, RATELIMIT_DEFAULT="2 per day")
    first, second, refused = (call(server, client_context, key=keys.reader) for _ in range(3))
    assert [first.headers["RateLimit"][:14], second.headers["RateLimit"][:14]] == [
        '"default";r=1;',
        '"default";r=0;',
    ]
    assert "Retry-After" not in first.headers
    assert refused.status == 429
    assert refused.headers["Content-Type"] == "application/problem+json"
    problem = refused.json()
    assert problem["status"] == 429
    assert problem["type"]
    assert problem["title"] == "Too Many Requests"
    assert refused.headers["RateLimit-Policy"] == '"default";q=2;w=86400'
    match = re.fullmatch(r'"default";r=0;t=(\d+)', refused.headers["RateLimit"])
    assert match, refused.headers["RateLimit"]
    assert 0 < int(match.group(1)) <= 24 * 3600
    assert refused.headers["Retry-After"] == match.group(1)
    assert refused.headers["Strict-Transport-Security"].startswith("max-age=")


def _mixed_burst(server: Server, keys: KeySet, context) -> dict[str, list[Answer]]:
    """A valid key, an unknown key, no key, and a route with its own limit, in parallel."""
    item = json.dumps({"name": "written during the outage"}).encode()
    sends: dict[str, Callable[[], Answer]] = {
        "valid": lambda: call(server, context, key=keys.reader),
        "unknown": lambda: call(server, context, key=keys.unconfigured),
        "none": lambda: call(server, context),
        "write": lambda: call(
            server,
            context,
            "/v1/items",
            key=keys.writer,
            method="POST",
            body=item,
            headers={"Content-Type": "application/json"},
        ),
    }
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = {name: [pool.submit(send) for _ in range(4)] for name, send in sends.items()}
        return {name: [future.result() for future in group] for name, group in futures.items()}


def test_redis_outage_falls_back_to_memory_and_recovers_by_itself(
    start_server: Callable[..., Server], redis_server: RedisServer, keys: KeySet, client_context
) -> None:
    server = start_server(
        *WORKERS,
        RATELIMIT_STORAGE_URI=redis_server.uri,
        RATELIMIT_DEFAULT="10000 per hour",
        RATELIMIT_AUTH_FAILURES="5 per hour",
    )
    warm = spread(server, 16, lambda: call(server, client_context, key=keys.reader), at_least=32)
    assert redis_count(redis_server, b"key:reader/") == len(warm)

    # First Redis hangs: every call waits for the socket timeout. Several requests are in
    # flight in each worker when the first of them switches that worker to memory.
    redis_server.command(b"CLIENT PAUSE 30000 ALL")
    try:
        hung = burst(32, lambda: call(server, client_context, key=keys.reader))
    finally:
        # Then it is gone: connections are refused.
        redis_server.stop()
    stopped = time.monotonic()
    assert statuses(hung) == {200: 32}
    assert max(answer.seconds for answer in hung) < MAX_SECONDS
    # Written by the worker's log thread, which may still be on it: wait for it.
    eventually(lambda: FALLBACK_WARNING in server.logs())

    during: dict[str, list[Answer]] = {"valid": [], "unknown": [], "none": [], "write": []}
    while time.monotonic() - stopped < 2.5:
        for name, answers in _mixed_burst(server, keys, client_context).items():
            during[name] += answers
    everything = [answer for answers in during.values() for answer in answers]
    assert max(answer.seconds for answer in everything) < MAX_SECONDS
    assert statuses(during["valid"]) == {200: len(during["valid"])}
    assert set(statuses(during["write"])) <= {201, 429}, statuses(during["write"])
    # Limits still hold, per process: each worker lets about 5 failures through, then 429.
    failed = statuses(during["unknown"] + during["none"])
    assert set(failed) == {401, 429}, failed
    assert failed[429] > failed[401]
    workers = set(served(server))
    assert len(workers) >= 2, workers

    redis_server.start()
    restarted = time.monotonic()
    recovered: set[str] = set()
    while time.monotonic() - restarted < 20 and not recovered.issuperset(workers):
        offset, before = len(server.logs()), redis_count(redis_server, b"key:reader/")
        answers = burst(16, lambda: call(server, client_context, key=keys.reader))
        assert statuses(answers) == {200: 16}
        assert max(answer.seconds for answer in answers) < MAX_SECONDS
        time.sleep(0.2)  # gunicorn writes an access line just after its response
        answered_by = served(server, offset)
        # A burst counted in full in Redis: every worker that answered it is back.
        counted = redis_count(redis_server, b"key:reader/") - before
        if counted == 16 == sum(counts.total() for counts in answered_by.values()):
            recovered |= set(answered_by)
    assert recovered.issuperset(workers), f"back on Redis: {recovered} of {workers}"


def test_redis_restart_between_requests_is_invisible_to_clients(
    start_server: Callable[..., Server], redis_server: RedisServer, keys: KeySet, client_context
) -> None:
    """Every worker's pooled connections die with the old redis-server: they are replaced
    before use, so no request fails and no worker falls back to memory."""
    server = start_server(
        *WORKERS, RATELIMIT_STORAGE_URI=redis_server.uri, RATELIMIT_DEFAULT="10000 per hour"
    )
    spread(server, 16, lambda: call(server, client_context, key=keys.reader), at_least=48)
    connected = set(served(server))
    assert len(connected) >= 2, connected
    redis_server.stop()
    redis_server.start()
    offset = len(server.logs())
    answers = waves(3, 16, lambda: call(server, client_context, key=keys.reader))
    assert statuses(answers) == {200: 48}
    assert redis_count(redis_server, b"key:reader/") == 48
    assert connected & set(served(server, offset))
    assert FALLBACK_WARNING not in server.logs()
