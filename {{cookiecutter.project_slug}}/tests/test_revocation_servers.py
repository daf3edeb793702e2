"""Revocation under real gunicorn masters that share one database (the same ITEMS_DB file, or the
same PostgreSQL database), as two hosts would: ``keys revoke`` and a holder's report take a key
off every worker of both within 2.5 s, with no file edited; a restart keeps it off; ``keys
unrevoke`` brings it back; ``keys report`` shows what the servers saw."""

from __future__ import annotations

import json
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint, parse_entry

from .support import KeySet, Server, bearer, keys_command

pytestmark = pytest.mark.slow

DEADLINE = 2.5  # seconds from the command's return, or the report's answer, to every worker
PROBES = 8  # requests per server at the deadline, each on its own connection: both workers answer some
WORKERS = ("--workers", "2")


def call(
    server: Server, context: ssl.SSLContext, path: str, key: MintedKey | None = None, body: Any = None
) -> tuple[int, dict[str, str], str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, headers={} if key is None else bearer(key))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, context=context, timeout=15) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def statuses(servers: tuple[Server, ...], context: ssl.SSLContext, key: MintedKey) -> list[int]:
    return [call(server, context, "/v1/whoami", key)[0] for server in servers for _ in range(PROBES)]


def refusing_by_the_deadline(
    servers: tuple[Server, ...], context: ssl.SSLContext, key: MintedKey, status: int, since: float
) -> str:
    """At ``since`` + DEADLINE, every probe of every server answers ``status``. Returns how soon
    each server first answered it, polled until then: a figure, printed, not asserted."""
    first: dict[int, float] = {}
    while time.monotonic() < since + DEADLINE:
        for server in servers:
            if server.port not in first and call(server, context, "/v1/whoami", key)[0] == status:
                first[server.port] = time.monotonic() - since
        time.sleep(0.05)
    assert statuses(servers, context, key) == [status] * len(servers) * PROBES
    return ", ".join(f"{first[server.port]:.2f} s" if server.port in first else "late" for server in servers)


@pytest.fixture
def scraper() -> MintedKey:
    return mint(KEY_PREFIX, key_id="prometheus", scopes=["metrics:read"], tenant="ops")


@pytest.fixture
def env(env: dict[str, str], keys: KeySet, scraper: MintedKey) -> dict[str, str]:
    return {**env, "API_KEYS": f"{keys.entries},{scraper.entry}"}


def metric(server: Server, context: ssl.SSLContext, scraper: MintedKey, line_start: str) -> float:
    text = call(server, context, "/metrics", scraper)[2]
    (line,) = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.rpartition(" ")[2])


def test_keys_revoke_takes_a_key_off_two_servers_within_the_deadline_and_a_restart_keeps_it_off(
    start_server: Callable[..., Server],
    env: dict[str, str],
    keys: KeySet,
    scraper: MintedKey,
    client_context: ssl.SSLContext,
) -> None:
    servers = (start_server(*WORKERS), start_server(*WORKERS))
    assert statuses(servers, client_context, keys.reader) == [200] * 2 * PROBES
    done = keys_command("revoke", "--id", "reader", "--reason", "leaked in a CI log", env=env)
    revoked_at = time.monotonic()
    assert done.returncode == 0, done.stderr
    took = refusing_by_the_deadline(servers, client_context, keys.reader, 401, revoked_at)
    assert statuses(servers, client_context, keys.writer) == [200] * 2 * PROBES
    print(f"keys revoke: the servers refused the key {took} after the command returned")

    # The request line says why, and the counters moved; no key id is a label.
    lines = [json.loads(line) for line in servers[0].logs().splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("auth_failure") == "revoked"]
    assert {(line["key_id"], line["status"]) for line in refused} == {("reader", 401)}
    assert metric(servers[0], client_context, scraper, 'api_auth_failures_total{reason="revoked"}') >= PROBES
    assert metric(servers[0], client_context, scraper, "api_keys_revoked") == 1

    # A restart reads the revocation before its first answer.
    servers[0].stop()
    servers = (start_server(*WORKERS), servers[1])
    assert statuses(servers[:1], client_context, keys.reader) == [401] * PROBES

    done = keys_command("unrevoke", "--id", "reader", env=env)
    unrevoked_at = time.monotonic()
    assert done.returncode == 0, done.stderr
    took = refusing_by_the_deadline(servers, client_context, keys.reader, 200, unrevoked_at)
    print(f"keys unrevoke: the servers accepted the key again {took} after the command returned")


def test_a_holders_report_answers_alike_and_takes_the_key_off_the_other_server_within_the_deadline(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    taking, other = start_server(*WORKERS), start_server(*WORKERS)
    malformed = keys.reader.secret[:-1] + ("x" if keys.reader.secret[-1] != "x" else "y")
    answers = [
        call(taking, client_context, "/v1/keys/revoke", body={"key": sent})
        for sent in (malformed, keys.reader.secret, keys.unconfigured.secret)
    ]
    reported_at = time.monotonic()
    assert [status for status, _, _ in answers] == [202] * 3
    assert {body for _, _, body in answers} == {'{"status":"accepted"}\n'}
    varying = {"X-Request-ID", "RateLimit", "Date", "Content-Length"}
    assert (
        len({frozenset((k, v) for k, v in headers.items() if k not in varying) for _, headers, _ in answers})
        == 1
    )

    took = refusing_by_the_deadline((taking, other), client_context, keys.reader, 401, reported_at)
    for key in (keys.writer, keys.other_tenant):
        assert statuses((taking, other), client_context, key) == [200] * 2 * PROBES
    print(f"a holder's report: the taking and the other server refused the key {took} after the 202")
    logs = taking.logs() + other.logs()
    assert logs.count('"message": "key revoked by its holder"') == 1
    for sent in (keys.reader.secret, malformed):
        assert sent[len(KEY_PREFIX) + 1 :][:12] not in logs


def test_keys_report_shows_the_last_use_a_server_recorded_and_null_for_a_key_never_used(
    start_server: Callable[..., Server], env: dict[str, str], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    server = start_server()
    assert call(server, client_context, "/v1/whoami", keys.reader)[0] == 200
    rows: dict[str, dict[str, Any]] = {}

    def reported() -> bool:
        done = keys_command("report", "--json", env=env)
        assert done.returncode == 0, done.stderr
        rows.update({row["id"]: row for row in json.loads(done.stdout)})
        return rows["reader"]["last_used"] is not None

    deadline = time.monotonic() + 30
    while not reported():
        assert time.monotonic() < deadline, "the last use never reached the database"
        time.sleep(0.5)
    assert rows["reader"]["last_used"].endswith("Z")
    assert rows["writer"]["last_used"] is None
    stale = keys_command("report", "--json", "--stale", "1", env=env)
    assert {row["id"] for row in json.loads(stale.stdout)} == set(rows) - {"reader"}


def test_the_incident_runbook_works_as_written(
    start_server: Callable[..., Server],
    env: dict[str, str],
    keys: KeySet,
    client_context: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    """docs/operations.md, "A key leaked": revoke it, roll its holder, check its last use."""
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"{keys.reader.entry}\n{keys.writer.entry}\n")
    keys_file.chmod(0o600)
    server = start_server(API_KEYS=None, API_KEYS_FILE=str(keys_file))
    operator = {**{k: v for k, v in env.items() if k != "API_KEYS"}, "API_KEYS_FILE": str(keys_file)}
    assert call(server, client_context, "/v1/whoami", keys.reader)[0] == 200  # used before the leak

    # 1. Revoke it.
    done = keys_command("revoke", "--id", "reader", "--reason", "in a public repository", env=operator)
    assert done.returncode == 0, done.stderr
    refusing_by_the_deadline((server,), client_context, keys.reader, 401, time.monotonic())

    # 2. Roll its holder, and HUP.
    rolled = keys_command(
        "roll", "--file", str(keys_file), "--id", "reader", "--overlap", "1", "--json", env=operator
    )
    assert rolled.returncode == 0, rolled.stderr
    successor = MintedKey(json.loads(rolled.stdout)["key"], parse_entry(json.loads(rolled.stdout)["entry"]))
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while call(server, client_context, "/v1/whoami", successor)[0] != 200:
        assert time.monotonic() < deadline, "the successor never worked"
        time.sleep(0.2)
    assert call(server, client_context, "/v1/whoami", keys.reader)[0] == 401

    # 3. Check its last use.
    report = keys_command("report", "--json", env=operator)
    assert report.returncode == 0, report.stderr
    rows = {row["id"]: row for row in json.loads(report.stdout)}
    assert rows["reader"]["last_used"] is not None
    assert (rows["reader"]["revoked"]["by"], rows["reader"]["revoked"]["reason"]) == (
        "cli",
        "in a public repository",
    )
    assert rows["reader~2"]["revoked"] is None
