"""Revocation in one worker: a revoked key gets exactly the 401 of an unknown key while its entry
stays configured, the request line and the counters say why, and a holder's report answers 202
whatever it sends, in the same time, revoking only a configured key. The key never reaches a
log line, a metric or a problem body. (Across servers and restarts: test_revocation_servers.py.)
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from {{ cookiecutter.package_name }} import requestlog
from {{ cookiecutter.package_name }}.access import UndeclaredRoute
from {{ cookiecutter.package_name }}.api import BLUEPRINTS
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint
from {{ cookiecutter.package_name }}.keywatch import KeyWatch, Origin
from {{ cookiecutter.package_name }}.stores.key_records import KeyRecords

from .support import KeySet, bearer, eventually

FRAGMENT = 12  # the masking filter's shortest key piece


def watch_of(app: Flask) -> KeyWatch:
    watch: KeyWatch = app.extensions["keywatch"]
    return watch


def records_of(app: Flask) -> KeyRecords:
    return KeyRecords(app.extensions["stores"].database)


def revoke(app: Flask, key_id: str, reason: str | None = "leaked") -> None:
    records_of(app).revoke(key_id, reason=reason, revoked_by="cli", at=dt.datetime.now(dt.UTC))


def status(client: FlaskClient, key: MintedKey) -> int:
    return client.get("/v1/whoami", headers=bearer(key)).status_code


def without_request_id(response: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {k: v for k, v in response.headers.items() if k not in ("X-Request-ID", "RateLimit")}
    body = response.get_json()
    del body["request_id"]
    return response.status_code, headers, body


def report(client: FlaskClient, body: Any, address: str = "192.0.2.7") -> Any:
    return client.post("/v1/keys/revoke", json=body, environ_base={"REMOTE_ADDR": address})


def samples(client: FlaskClient, scraper: MintedKey) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = client.get("/metrics", headers=bearer(scraper)).get_data(as_text=True)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def scraper() -> MintedKey:
    return mint(KEY_PREFIX, key_id="prometheus", scopes=["metrics:read"], tenant="ops")


@pytest.fixture
def env(env: dict[str, str], keys: KeySet, scraper: MintedKey) -> dict[str, str]:
    return {**env, "API_KEYS": f"{keys.entries},{scraper.entry}"}


# --- refused like an unknown key ----------------------------------------------------------------


def test_a_revoked_key_gets_exactly_the_401_of_an_unknown_key(
    make_app: Callable[..., Flask], keys: KeySet
) -> None:
    app = make_app()
    client = app.test_client()
    assert status(client, keys.reader) == 200
    revoke(app, "reader")
    eventually(lambda: status(client, keys.reader) == 401)
    revoked = client.get("/v1/items", headers=bearer(keys.reader))
    unknown = client.get("/v1/items", headers=bearer(keys.unconfigured))
    assert without_request_id(revoked) == without_request_id(unknown)
    assert revoked.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    # Only that key: its entry is still configured, and the others work on.
    assert status(client, keys.writer) == 200


def test_the_request_line_says_revoked_and_names_the_key_id(
    make_app: Callable[..., Flask], keys: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    revoke(app, "reader")
    client = app.test_client()
    eventually(lambda: status(client, keys.reader) == 401)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=requestlog.__name__):
        client.get("/v1/whoami", headers=bearer(keys.reader))
    (line,) = [r for r in caplog.records if r.name == requestlog.__name__]
    assert (line.status, line.auth_failure, line.key_id) == (401, "revoked", "reader")


def test_refusals_as_revoked_and_revoked_keys_are_counted_without_a_key_id_label(
    make_app: Callable[..., Flask], keys: KeySet, scraper: MintedKey
) -> None:
    app = make_app()
    client = app.test_client()
    before = samples(client, scraper)
    revoke(app, "reader")
    eventually(lambda: status(client, keys.reader) == 401)
    client.get("/v1/whoami", headers=bearer(keys.reader))
    after = samples(client, scraper)
    refused = ("api_auth_failures_total", frozenset({("reason", "revoked")}))
    assert after[refused] - before.get(refused, 0) >= 2
    # No label: a key id as one would list the clients to whoever reads the metrics.
    assert after[("api_keys_revoked", frozenset())] == 1
    read_at = after[("api_revocations_read_timestamp_seconds", frozenset())]
    assert time.time() - 30 < read_at <= time.time()


def test_unrevoke_accepts_the_key_again(make_app: Callable[..., Flask], keys: KeySet) -> None:
    app = make_app()
    client = app.test_client()
    revoke(app, "reader")
    eventually(lambda: status(client, keys.reader) == 401)
    assert records_of(app).unrevoke("reader") is True
    eventually(lambda: status(client, keys.reader) == 200)
    assert records_of(app).unrevoke("reader") is False


def test_a_revocation_made_before_the_start_holds_from_the_first_request(
    make_app: Callable[..., Flask], keys: KeySet
) -> None:
    first = make_app()
    revoke(first, "reader")
    # Another worker, or the service after a restart, on the same database.
    client = make_app().test_client()
    assert status(client, keys.reader) == 401
    assert status(client, keys.writer) == 200


def test_a_revoked_key_is_refused_on_public_routes_too_without_failing_them(
    make_app: Callable[..., Flask], keys: KeySet
) -> None:
    app = make_app()
    revoke(app, "reader")
    client = app.test_client()
    eventually(lambda: status(client, keys.reader) == 401)
    assert client.get("/healthz", headers=bearer(keys.reader)).status_code == 200


# --- the holder's report ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent", ["configured", "unknown", "malformed", "expired", "empty", "not a key at all"]
)
def test_a_report_answers_202_whatever_key_it_sends(
    make_app: Callable[..., Flask], keys: KeySet, sent: str
) -> None:
    client = make_app().test_client()
    key = {
        "configured": keys.reader.secret,
        "unknown": keys.unconfigured.secret,
        "malformed": keys.reader.secret[:-1] + ("x" if keys.reader.secret[-1] != "x" else "y"),
        "expired": keys.expired.secret,
        "empty": "",
        "not a key at all": "hello " * 100,
    }[sent]
    response = report(client, {"key": key})
    assert response.status_code == 202
    assert response.get_json() == {"status": "accepted"}
    assert response.headers["Cache-Control"] == "no-store"


def test_a_reported_key_is_refused_at_once_and_recorded_others_work_on(
    make_app: Callable[..., Flask], keys: KeySet
) -> None:
    app = make_app()
    client = app.test_client()
    assert report(client, {"key": keys.reader.secret}).status_code == 202
    # The worker that took the report refuses the key before anything is written.
    assert status(client, keys.reader) == 401
    eventually(lambda: "reader" in records_of(app).revoked_ids())
    found = records_of(app).revocations()["reader"]
    assert (found.revoked_by, found.reason) == ("holder", None)
    assert status(client, keys.writer) == 200
    assert status(make_app().test_client(), keys.reader) == 401  # another worker: from the database


def test_a_report_of_an_unknown_or_malformed_key_revokes_nothing(
    make_app: Callable[..., Flask], keys: KeySet
) -> None:
    app = make_app()
    client = app.test_client()
    for key in (keys.unconfigured.secret, keys.reader.secret[:-1], f"{KEY_PREFIX}_nothing"):
        assert report(client, {"key": key}).status_code == 202
    time.sleep(1.5)  # more than a turn of the writer
    assert records_of(app).revoked_ids() == frozenset()
    assert [status(client, key) for key in (keys.reader, keys.writer, keys.other_tenant)] == [200] * 3


def test_a_holder_revocation_is_logged_once_by_id_with_its_origin(
    make_app: Callable[..., Flask], keys: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    client = app.test_client()
    with caplog.at_level(logging.INFO):
        answer = report(client, {"key": keys.reader.secret}, address="198.51.100.4")
        report(client, {"key": keys.reader.secret}, address="198.51.100.5")
        eventually(lambda: "reader" in records_of(app).revoked_ids())
        time.sleep(1.2)
    lines = [r for r in caplog.records if r.getMessage() == "key revoked by its holder"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.key_id, line.revoked_by, line.remote_addr) == ("reader", "holder", "198.51.100.4")
    assert line.request_id == answer.headers["X-Request-ID"]


@pytest.mark.parametrize(
    "body",
    [{}, {"token": "x"}, {"key": 7}, {"key": None}, {"key": ["k"]}, ["key"], "key"],
    ids=["empty", "another field", "a number", "null", "a list", "an array", "a string"],
)
def test_a_body_that_is_not_the_shape_is_a_422_that_names_the_field_only(
    make_app: Callable[..., Flask], keys: KeySet, body: Any
) -> None:
    client = make_app().test_client()
    planted = keys.reader.secret
    # A key hidden wherever the shape allows it: as a field's name, and inside the wrong type.
    if isinstance(body, dict):
        body = {**body, planted: 1}
        if isinstance(body.get("key"), list):
            body["key"] = [planted]
    response = report(client, body)
    assert response.status_code == 422
    assert planted[len(KEY_PREFIX) + 1 :][:FRAGMENT] not in response.get_data(as_text=True)
    assert {error["pointer"] for error in response.get_json()["errors"]} <= {"#/key", "#/"}
    assert status(client, keys.reader) == 200


def test_a_report_is_limited_per_address_not_per_key(make_app: Callable[..., Flask], keys: KeySet) -> None:
    client = make_app().test_client()
    answers = [report(client, {"key": f"guess-{n}"}, address="203.0.113.9").status_code for n in range(21)]
    assert answers == [202] * 20 + [429]
    assert report(client, {"key": "guess"}, address="203.0.113.10").status_code == 202


def test_no_key_reported_reaches_a_log_line_a_metric_or_an_answer(
    make_app: Callable[..., Flask], keys: KeySet, scraper: MintedKey, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    client = app.test_client()
    sent = [keys.reader.secret, keys.unconfigured.secret, keys.writer.secret[:-1]]
    with caplog.at_level(logging.DEBUG):
        answers = [report(client, {"key": key}).get_data(as_text=True) for key in sent]
        answers.append(report(client, {"key": [keys.writer.secret]}).get_data(as_text=True))
        eventually(lambda: "reader" in records_of(app).revoked_ids())
        time.sleep(1.2)
        exposition = client.get("/metrics", headers=bearer(scraper)).get_data(as_text=True)
    written = "\n".join([caplog.text, *(str(vars(record)) for record in caplog.records)])
    for key in sent:
        piece = key[len(KEY_PREFIX) + 1 :][:FRAGMENT]
        assert piece not in written
        assert piece not in exposition
        assert all(piece not in answer for answer in answers)


# --- the same work whatever is sent -------------------------------------------------------------


def calls_made(call: Callable[[], None]) -> list[tuple[str, str]]:
    """Every function and built-in that ``call`` calls, in order (this thread only)."""
    made: list[tuple[str, str]] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            made.append((event, frame.f_code.co_qualname))
        elif event == "c_call":
            made.append((event, arg.__qualname__))

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return made


def test_a_report_makes_the_same_calls_for_a_configured_and_an_unknown_key(
    make_app: Callable[..., Flask], keys: KeySet
) -> None:
    """By construction: what the request path does for a key is call for call the same, whether
    the key is configured or not (only the writer, after the answer, tells them apart). A
    malformed key is told apart sooner, by its format: anyone can compute that offline."""
    watch = watch_of(make_app())
    # Without its loops: a writer thread waiting on its wake-up, or not, adds calls of its own.
    watch.close()
    origin = Origin("test", "192.0.2.1")
    configured = calls_made(lambda: watch.report(keys.reader.secret, origin))
    unknown = calls_made(lambda: watch.report(keys.unconfigured.secret, origin))
    # Not vacuous: both verified the key and woke the writer (by name: a mutation run wraps them).
    called = " ".join(name for event, name in configured if event == "call")
    assert "verify" in called
    assert "wake" in called
    assert configured == unknown


def files_called(call: Callable[[], None]) -> set[str]:
    """The source file of every Python function that ``call`` calls (this thread only)."""
    files: set[str] = set()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            files.add(frame.f_code.co_filename)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return files


def test_a_reports_request_reads_and_writes_no_key_record_whatever_key_it_sends(
    make_app: Callable[..., Flask], keys: KeySet
) -> None:
    """What would make a configured key's answer slower than an unknown one's is a call to the key
    records in the request (a write takes milliseconds): the request files the report in memory,
    and the worker's writer records it after the answer, in a thread of its own. Asserted by what
    the request's thread calls, not by a stopwatch, which a loaded machine moves more than a write."""
    app = make_app()
    client = app.test_client()
    client.get("/v1/whoami", headers=bearer(keys.writer))  # the first read of revocations is done
    malformed = keys.reader.secret[:-1] + ("0" if keys.reader.secret[-1] != "0" else "1")
    sent = {"configured": keys.reader.secret, "unknown": keys.unconfigured.secret, "malformed": malformed}
    for n, (kind, secret) in enumerate(sent.items()):
        answers = []
        for_records = [
            f
            for f in files_called(lambda: answers.append(report(client, {"key": secret}, f"192.0.2.{n + 1}")))  # noqa: B023 - called at once, in this turn
            if f.endswith("/stores/key_records.py")
        ]
        assert [answer.status_code for answer in answers] == [202], kind
        assert for_records == [], kind
    # Not vacuous: the same profile sees a call to the records, and the report reached the writer.
    assert any(
        f.endswith("/stores/key_records.py") for f in files_called(lambda: records_of(app).revoked_ids())
    )
    eventually(lambda: status(client, keys.reader) == 401 and "reader" in records_of(app).revoked_ids())


def test_an_app_that_fails_to_build_leaves_no_loop_reading_the_database(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    loops = {"reading key revocations", "writing key records"}

    def running() -> int:
        return sum(thread.name in loops for thread in threading.enumerate())

    before = running()
    plain = Blueprint("test-undeclared", __name__, url_prefix="/test-only/undeclared")
    plain.add_url_rule("", "undeclared", lambda: {})
    monkeypatch.setattr("{{ cookiecutter.package_name }}.api.BLUEPRINTS", (*BLUEPRINTS, plain))
    with pytest.raises(UndeclaredRoute):
        make_app()
    assert running() == before
    monkeypatch.undo()
    make_app()
    assert running() == before + 2
