"""Reloads say what they did: every SIGHUP writes one JSON line through the service's logging,
naming the key ids added, removed and changed (never a digest, never a key), or the reason it
was refused while the previous configuration keeps serving."""

from __future__ import annotations

import dataclasses
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

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, KeyRing, MintedKey, mint, parse_network
from {{ cookiecutter.package_name }}.keys.entries import parse_expiry
from {{ cookiecutter.package_name }}.serving import key_changes

from .support import KeySet, Server, bearer, eventually

KEY = mint(KEY_PREFIX, key_id="ci", scopes=["items:read"], tenant="acme")
CHANGES = {
    "scopes": dataclasses.replace(KEY.key, scopes=frozenset({"items:read", "items:write"})),
    "tenant": dataclasses.replace(KEY.key, tenant="globex"),
    "expiry": dataclasses.replace(KEY.key, expires=parse_expiry("2027-01-01")),
    "limit": dataclasses.replace(KEY.key, limit="10 per minute"),
    "nets": dataclasses.replace(KEY.key, nets=(parse_network("10.0.0.0/8"),)),
    "digest": mint(KEY_PREFIX, key_id="ci", scopes=["items:read"], tenant="acme").key,
}


def ring(*keys: Any) -> KeyRing:
    return KeyRing(KEY_PREFIX, keys)


@pytest.mark.parametrize("field", CHANGES)
def test_the_same_id_with_another_entry_is_changed(field: str) -> None:
    assert key_changes(ring(KEY.key), ring(CHANGES[field])) == {
        "keys_added": [],
        "keys_removed": [],
        "keys_changed": ["ci"],
    }


def test_ids_added_and_removed_are_named_in_order_and_an_unchanged_entry_is_not() -> None:
    others = [mint(KEY_PREFIX, key_id=name, scopes=["a:b"]).key for name in ("b", "a", "c")]
    assert key_changes(ring(KEY.key, others[2]), ring(KEY.key, others[0], others[1])) == {
        "keys_added": ["a", "b"],
        "keys_removed": ["c"],
        "keys_changed": [],
    }


# --- under gunicorn -----------------------------------------------------------------------------


def status(server: Server, context: ssl.SSLContext, key: MintedKey) -> int:
    request = urllib.request.Request(f"{server.url}/v1/whoami", headers=bearer(key))
    try:
        with urllib.request.urlopen(request, context=context, timeout=15) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def json_lines(server: Server, message: str) -> list[dict[str, Any]]:
    return [
        line
        for line in (json.loads(text) for text in server.logs().splitlines() if text.startswith("{"))
        if line["message"] == message
    ]


def write_keys(path: Path, *lines: str) -> None:
    # Written then renamed, as a secret store does: a reload never reads half a file.
    partial = path.with_suffix(".new")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)


APPLIED = "reload applied"
REFUSED = "reload refused, still serving the previous configuration"


@pytest.mark.slow
def test_a_reload_logs_one_json_line_naming_the_ids_it_changed_and_a_refused_one_says_why(
    start_server: Callable[..., Server], keys: KeySet, client_context: ssl.SSLContext, tmp_path: Path
) -> None:
    keys_file = tmp_path / "api-keys"
    write_keys(keys_file, keys.reader.entry, keys.other_tenant.entry)
    server = start_server(API_KEYS=None, API_KEYS_FILE=str(keys_file))
    assert json_lines(server, APPLIED) == []  # a start is not a reload

    # Swap reader for writer, and give "other" another scope.
    rescoped = dataclasses.replace(keys.other_tenant.key, scopes=frozenset({"items:read"}))
    write_keys(keys_file, keys.writer.entry, rescoped.entry())
    server.process.send_signal(signal.SIGHUP)
    eventually(lambda: status(server, client_context, keys.writer) == 200)
    eventually(lambda: json_lines(server, APPLIED) != [])
    (applied,) = json_lines(server, APPLIED)
    assert applied["level"] == "INFO"
    assert (applied["keys_added"], applied["keys_removed"], applied["keys_changed"]) == (
        ["writer"],
        ["reader"],
        ["other"],
    )

    write_keys(keys_file, keys.writer.entry, keys.reader.secret)  # a raw key, by mistake
    server.process.send_signal(signal.SIGHUP)
    eventually(lambda: json_lines(server, REFUSED) != [])
    time.sleep(1)  # any replacement worker has booted by now
    (refused,) = json_lines(server, REFUSED)
    assert refused["level"] == "ERROR"
    assert refused["reason"].startswith("API_KEYS_FILE: entry 2 is a raw key")
    assert len(json_lines(server, APPLIED)) == 1
    assert status(server, client_context, keys.writer) == 200
    assert status(server, client_context, keys.reader) == 401
    logs = server.logs()
    for key in (keys.reader, keys.writer, keys.other_tenant):
        assert key.secret[len(KEY_PREFIX) + 1 :][:12] not in logs
        assert key.key.digest.hex() not in logs
    # Every line the master and its workers wrote is JSON: no plain-text refusal beside it. The
    # one plain line is the start's warning that APP_ENV=test, which these servers use, is unsafe.
    plain = [line for line in logs.splitlines() if line.strip() and not line.startswith("{")]
    assert [line for line in plain if not line.startswith("warning: APP_ENV: test ")] == []
