"""What limits a stolen key, through a real gunicorn: a key's own rate limit, the networks it may
be used from, expiry to the minute, a maximum lifetime, and ``keys roll`` as an operator runs it."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import signal
import ssl
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint, parse_entry, parse_network, refused_from

from .support import KeySet, Server, bearer, eventually, free_port, keys_command, run_gunicorn

pytestmark = pytest.mark.slow

UTC = dt.UTC


def call(
    server: Server,
    key: MintedKey | None,
    context: ssl.SSLContext | None,
    path: str = "/v1/whoami",
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, Any]:
    """One request on a fresh connection; HTTPS when ``context`` is given."""
    sent = {**(bearer(key) if key is not None else {}), **(headers or {})}
    connection: http.client.HTTPConnection
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    else:
        connection = http.client.HTTPSConnection("localhost", server.port, timeout=10, context=context)
    try:
        connection.request("GET", path, headers=sent)
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


def minute(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%MZ")


def start_failure(overrides: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    """gunicorn's exit status and output when a configuration stops its start."""
    log_path = tmp_path / "gunicorn.log"
    process = run_gunicorn({**overrides, "BIND": f"127.0.0.1:{free_port()}"}, log_path)
    try:
        returncode = process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return returncode, log_path.read_text(encoding="utf-8", errors="replace")


def test_a_key_with_its_own_small_limit_gets_429_while_a_default_key_does_not(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    metered = mint(KEY_PREFIX, key_id="metered", scopes=["items:read"], limit="3 per minute")
    server = start_server(API_KEYS=f"{keys.entries},{metered.entry}")
    answers = [call(server, metered, client_context) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    _, headers, body = answers[-1]
    assert headers["RateLimit-Policy"] == '"key";q=3;w=60'
    assert 0 < int(headers["Retry-After"]) <= 60
    assert body["status"] == 429
    assert [call(server, keys.reader, client_context)[0] for _ in range(4)] == [200] * 4


def test_a_key_outside_its_networks_gets_401_and_one_inside_gets_200(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    inside = mint(KEY_PREFIX, key_id="inside", scopes=["items:read"], nets=[parse_network("127.0.0.0/8")])
    outside = mint(KEY_PREFIX, key_id="outside", scopes=["items:read"], nets=[parse_network("192.0.2.0/24")])
    server = start_server(API_KEYS=f"{keys.entries},{inside.entry},{outside.entry}")
    assert call(server, inside, client_context, "/v1/items")[0] == 200
    status, headers, body = call(server, outside, client_context, "/v1/items")
    _, unknown_headers, unknown = call(server, keys.unconfigured, client_context, "/v1/items")
    assert status == 401
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["WWW-Authenticate"] == unknown_headers["WWW-Authenticate"]
    assert {**body, "request_id": None} == {**unknown, "request_id": None}
    # No proxy is trusted here: a header naming an address inside the networks changes nothing.
    claimed = {"X-Forwarded-For": "192.0.2.7", "X-Real-IP": "192.0.2.7", "Forwarded": "for=192.0.2.7"}
    assert call(server, outside, client_context, "/v1/items", claimed)[0] == 401
    # Written by the worker's log thread after the answer: wait for it, not for a fixed time.
    eventually(lambda: "outside_networks" in server.logs())


def test_networks_are_checked_against_the_client_the_trusted_proxy_reports(
    start_server: Callable[..., Server],
) -> None:
    fenced = mint(KEY_PREFIX, key_id="fenced", scopes=["items:read"], nets=[parse_network("192.0.2.0/24")])
    server = start_server(tls=False, API_KEYS=fenced.entry, FORWARDED_ALLOW_IPS="127.0.0.1")
    https = {"X-Forwarded-Proto": "https"}
    assert call(server, fenced, None, headers={**https, "X-Forwarded-For": "192.0.2.7"})[0] == 200
    assert call(server, fenced, None, headers={**https, "X-Forwarded-For": "198.51.100.7"})[0] == 401


def test_an_instant_in_the_past_is_refused(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    past = dt.datetime.now(UTC).replace(second=0, microsecond=0) - dt.timedelta(minutes=1)
    lapsed = mint(KEY_PREFIX, key_id="lapsed", scopes=["items:read"], expires=past)
    assert f"expires={minute(past)};" in lapsed.entry
    server = start_server(API_KEYS=f"{keys.entries},{lapsed.entry}")
    status, headers, _ = call(server, lapsed, client_context)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="api"'
    # Written by the worker's log thread after the answer: wait for it, not for a fixed time.
    eventually(lambda: "expired" in server.logs())


def test_a_key_expiring_a_minute_from_now_is_accepted_then_refused_after_that_instant(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    now = dt.datetime.now(UTC)
    # The next whole minute, unless it is too close to start a server and ask once before it.
    instant = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    if instant - now < dt.timedelta(seconds=15):
        instant += dt.timedelta(minutes=1)
    minted = keys_command(
        "new", "--id", "fleeting", "--scope", "items:read", "--expires", minute(instant), "--json"
    )
    assert minted.returncode == 0, minted.stderr
    printed = json.loads(minted.stdout)
    fleeting = MintedKey(printed["key"], parse_entry(printed["entry"]))
    server = start_server(API_KEYS=f"{keys.entries},{fleeting.entry}")
    assert dt.datetime.now(UTC) < instant, "the server took too long to start"
    assert call(server, fleeting, client_context)[0] == 200
    time.sleep(max(0.0, (instant - dt.datetime.now(UTC)).total_seconds()) + 0.5)
    assert call(server, fleeting, client_context)[0] == 401
    assert call(server, keys.reader, client_context)[0] == 200


def test_keys_new_refuses_an_instant_in_the_past() -> None:
    past = minute(dt.datetime.now(UTC) - dt.timedelta(minutes=1))
    refused = keys_command("new", "--id", "late", "--scope", "items:read", "--expires", past)
    assert refused.returncode == 2
    assert "not in the future" in refused.stderr
    assert refused.stdout == ""


def test_after_a_roll_both_keys_work_with_the_same_tenant_and_scopes(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    old = mint(
        KEY_PREFIX,
        key_id="ci-deploy",
        scopes=["items:read", "items:write"],
        tenant="acme",
        limit="500 per hour",
        nets=[parse_network("127.0.0.0/8")],
    )
    before = dt.datetime.now(UTC)
    rolled = keys_command("roll", "--overlap", "2", "--json", stdin=f"{old.entry}\n")
    after = dt.datetime.now(UTC)
    assert rolled.returncode == 0, rolled.stderr
    printed = json.loads(rolled.stdout)
    assert set(printed) == {"key", "entry", "old_entry"}
    retired = parse_entry(printed["old_entry"])
    assert retired.expires is not None
    assert (
        before + dt.timedelta(hours=2)
        <= refused_from(retired.expires)
        <= after + dt.timedelta(hours=2, minutes=1)
    )
    successor = MintedKey(printed["key"], parse_entry(printed["entry"]))
    assert (successor.key.limit, successor.key.nets) == (old.key.limit, old.key.nets)

    server = start_server(API_KEYS=f"{keys.entries}\n{printed['old_entry']}\n{printed['entry']}")
    old_status, old_headers, old_body = call(server, old, client_context)
    new_status, new_headers, new_body = call(server, successor, client_context)
    assert (old_status, new_status) == (200, 200)
    assert (old_body["key_id"], new_body["key_id"]) == ("ci-deploy", "ci-deploy~2")
    assert old_body["tenant"] == new_body["tenant"] == "acme"
    assert old_body["scopes"] == new_body["scopes"] == ["items:read", "items:write"]
    policies = '"default";q=100;w=60, "key";q=500;w=3600'
    assert old_headers["RateLimit-Policy"] == new_headers["RateLimit-Policy"] == policies


def test_keys_check_shows_every_field() -> None:
    full = mint(
        KEY_PREFIX,
        key_id="full",
        scopes=["items:read", "items:write"],
        tenant="acme",
        expires=dt.datetime(2031, 2, 3, 4, 5, tzinfo=UTC),
        limit="10/second;1000/hour",
        nets=[parse_network("10.0.0.0/8"), parse_network("2001:db8::/32")],
    )
    plain = mint(KEY_PREFIX, key_id="plain", scopes=["items:read"], expires=dt.date(2031, 1, 1))
    checked = keys_command("check", stdin=f"{full.entry}\n{plain.entry}\n")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == [
        "full: tenant=acme scopes=items:read,items:write expires=2031-02-03T04:05Z "
        "limit=10/second;1000/hour nets=10.0.0.0/8,2001:db8::/32",
        "plain: tenant=default scopes=items:read expires=2031-01-01 limit=RATELIMIT_DEFAULT nets=any",
    ]
    as_json = json.loads(keys_command("check", "--json", stdin=full.entry).stdout)
    assert as_json == [
        {
            "id": "full",
            "tenant": "acme",
            "scopes": ["items:read", "items:write"],
            "expires": "2031-02-03T04:05Z",
            "limit": "10/second;1000/hour",
            "nets": ["10.0.0.0/8", "2001:db8::/32"],
        }
    ]
    for minted in (full, plain):
        assert minted.secret not in checked.stdout


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("limit", "0 per minute"),
        ("limit", "10 per 0 seconds"),
        ("limit", "plenty"),
        ("nets", "192.0.2.1/24"),
        ("nets", "intranet"),
    ],
    ids=["limit-zero-amount", "limit-zero-window", "limit-words", "nets-host-bits", "nets-name"],
)
def test_a_bad_limit_or_networks_stops_the_start_naming_api_keys_and_the_position(
    env: dict[str, str], keys: KeySet, tmp_path: Path, field: str, value: str
) -> None:
    bad = keys.writer.entry.replace(";sha256", f";{field}={value};sha256")
    returncode, output = start_failure({**env, "API_KEYS": f"{keys.reader.entry}\n{bad}"}, tmp_path)
    assert returncode != 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith(f"error: API_KEYS: entry 2 {field} "), output
    assert value not in output
    assert "writer" not in output
    assert keys.writer.entry[-20:] not in output


# --- a maximum lifetime ------------------------------------------------------------------------------


def expiring_in(days: int, key_id: str, scopes: tuple[str, ...] = ("items:read",)) -> MintedKey:
    return mint(
        KEY_PREFIX, key_id=key_id, scopes=scopes, expires=dt.datetime.now(UTC) + dt.timedelta(days=days)
    )


def test_under_a_maximum_lifetime_a_key_without_expiry_stops_gunicorn_naming_its_id(
    env: dict[str, str], keys: KeySet, tmp_path: Path
) -> None:
    lasting = mint(KEY_PREFIX, key_id="ci", scopes=["items:read"])
    overrides = {
        **env,
        "KEY_MAX_LIFETIME_DAYS": "90",
        "API_KEYS": f"{expiring_in(30, 'soon').entry},{lasting.entry}",
    }
    returncode, output = start_failure(overrides, tmp_path)
    assert returncode != 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "KEY_MAX_LIFETIME_DAYS" in line]
    assert errors == [
        "error: KEY_MAX_LIFETIME_DAYS: entry 'ci' has no expiry; "
        "give it one at most 90 days ahead ('keys roll' does)"
    ], output
    assert all("Starting gunicorn" in line for line in lines if line != errors[0]), output
    assert "Traceback" not in output
    assert lasting.entry.split("sha256=")[1] not in output


def test_under_a_maximum_lifetime_a_reload_with_a_lasting_key_is_refused(
    start_server: Callable[..., Server], client_context: ssl.SSLContext, tmp_path: Path
) -> None:
    working, lasting = expiring_in(30, "working"), mint(KEY_PREFIX, key_id="lasting", scopes=["items:read"])
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"{working.entry}\n")
    server = start_server(API_KEYS=None, API_KEYS_FILE=str(keys_file), KEY_MAX_LIFETIME_DAYS="90")
    assert call(server, working, client_context)[0] == 200
    keys_file.write_text(f"{working.entry}\n{lasting.entry}\n")
    server.process.send_signal(signal.SIGHUP)
    eventually(lambda: "reload refused" in server.logs())
    time.sleep(1)  # let any replacement worker boot (or fail to)
    refusals = [line for line in server.logs().splitlines() if "reload refused" in line]
    assert len(refusals) == 1
    assert "KEY_MAX_LIFETIME_DAYS: entry 'lasting' has no expiry" in refusals[0]
    assert call(server, working, client_context)[0] == 200
    assert call(server, lasting, client_context)[0] == 401


@pytest.mark.parametrize("command", ["new", "roll"])
def test_keys_new_and_roll_expire_keys_at_the_maximum_lifetime_the_environment_sets(command: str) -> None:
    before = dt.datetime.now(UTC)
    old = mint(KEY_PREFIX, key_id="ci", scopes=["items:read"], expires=before + dt.timedelta(days=3))
    args = (
        ("new", "--id", "ci", "--scope", "items:read")
        if command == "new"
        else ("roll", old.entry, "--overlap", "1")
    )
    printed = keys_command(*args, "--json", env={"KEY_MAX_LIFETIME_DAYS": "7"})
    assert printed.returncode == 0, printed.stderr
    expires = parse_entry(json.loads(printed.stdout)["entry"]).expires
    assert expires is not None
    assert (
        before + dt.timedelta(days=7, minutes=-1)
        <= refused_from(expires)
        <= dt.datetime.now(UTC) + dt.timedelta(days=7)
    )
    refused = keys_command(*args, "--json", env={"KEY_MAX_LIFETIME_DAYS": "a week"})
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == "error: KEY_MAX_LIFETIME_DAYS: must be a whole number\n"


# --- roll in place ----------------------------------------------------------------------------------


def test_keys_roll_in_place_then_hup_serves_both_keys_and_keeps_the_files_mode(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext, tmp_path: Path
) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"# rotated by keys roll --file\n{keys.reader.entry}\n{keys.writer.entry}\n")
    keys_file.chmod(0o600)
    server = start_server(API_KEYS=None, API_KEYS_FILE=str(keys_file))
    rolled = keys_command("roll", "--file", str(keys_file), "--id", "reader", "--overlap", "2", "--json")
    assert rolled.returncode == 0, rolled.stderr
    printed = json.loads(rolled.stdout)
    successor = MintedKey(printed["key"], parse_entry(printed["entry"]))
    text = keys_file.read_text()
    assert successor.secret not in text
    assert len(text.splitlines()) == 4
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert call(server, successor, client_context)[0] == 401  # not before the reload
    server.process.send_signal(signal.SIGHUP)
    # Until the old worker has left, it may answer: the new key works once a new worker does.
    answers: list[tuple[int, http.client.HTTPMessage, Any]] = []

    def reloaded() -> bool:
        answers.append(call(server, successor, client_context))
        return answers[-1][0] == 200

    eventually(reloaded)
    body = answers[-1][2]
    assert (body["key_id"], body["tenant"]) == ("reader~2", "acme")
    assert call(server, keys.reader, client_context)[0] == 200
    assert call(server, keys.writer, client_context)[0] == 200
