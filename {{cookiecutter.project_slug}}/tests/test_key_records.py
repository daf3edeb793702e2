"""The key records: the store every worker and the keys command share, the last use that workers
write (once a minute per key, off the request path, never failing a request), and the keys
command's revoke, unrevoke and report, which never echo a key."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from flask import Flask

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, KeyRing
from {{ cookiecutter.package_name }}.keys.__main__ import _records as command_records
from {{ cookiecutter.package_name }}.keys.cli import main
from {{ cookiecutter.package_name }}.keys.records import Records, Service
from {{ cookiecutter.package_name }}.keywatch import KeyWatch
from {{ cookiecutter.package_name }}.settings import database_settings_from, settings_from
from {{ cookiecutter.package_name }}.stores import StoreUnavailable
from {{ cookiecutter.package_name }}.stores.key_records import KeyRecords, opened

from .support import KeySet, bearer, eventually, keys_command

UTC = dt.UTC


@pytest.fixture
def records(make_app: Callable[..., Flask]) -> KeyRecords:
    """The records of the test's database, migrated by the service as it starts."""
    return KeyRecords(make_app().extensions["stores"].database)


def this_minute() -> dt.datetime:
    return dt.datetime.now(UTC).replace(second=0, microsecond=0)


# --- the store ------------------------------------------------------------------------------------


def test_a_revocation_is_recorded_once_and_the_first_record_stays(records: KeyRecords) -> None:
    at = dt.datetime(2026, 12, 1, 9, 30, 15, tzinfo=UTC)
    assert records.revoke("ci", reason="leaked in a CI log", revoked_by="cli", at=at) is None
    earlier = records.revoke("ci", reason="again", revoked_by="holder", at=at + dt.timedelta(hours=1))
    assert earlier is not None
    assert (earlier.reason, earlier.revoked_by, earlier.revoked_at) == ("leaked in a CI log", "cli", at)
    assert records.revocations() == {"ci": earlier}
    assert records.revoked_ids() == frozenset({"ci"})
    assert records.unrevoke("ci") is True
    assert records.unrevoke("ci") is False
    assert records.revoked_ids() == frozenset()


def test_the_latest_use_of_a_key_is_kept_whichever_worker_writes_last(records: KeyRecords) -> None:
    early, late = dt.datetime(2026, 12, 1, 9, 30, tzinfo=UTC), dt.datetime(2026, 12, 1, 9, 31, tzinfo=UTC)
    records.record_uses({"ci": late, "ops": early})
    records.record_uses({"ci": early})  # a slower worker, with an older minute
    assert records.last_uses() == {"ci": late, "ops": early}


# --- last use, as the workers write it ------------------------------------------------------------


def test_a_request_records_its_keys_last_use_to_the_minute_and_a_key_never_used_has_none(
    make_app: Callable[..., Flask], keys: KeySet
) -> None:
    app = make_app()
    records = KeyRecords(app.extensions["stores"].database)
    before = this_minute()
    assert app.test_client().get("/v1/whoami", headers=bearer(keys.reader)).status_code == 200
    eventually(lambda: "reader" in records.last_uses())
    used = records.last_uses()
    assert before <= used["reader"] <= this_minute()
    assert used["reader"].second == 0
    assert "writer" not in used


class Counting:
    """The real records, with each write of last uses kept for the test to count."""

    def __init__(self, real: KeyRecords) -> None:
        self.real = real
        self.writes: list[dict[str, dt.datetime]] = []

    def revoked_ids(self) -> frozenset[str]:
        return self.real.revoked_ids()

    def revoke(self, key_id: str, *, reason: str | None, revoked_by: str, at: dt.datetime) -> object:
        return self.real.revoke(key_id, reason=reason, revoked_by=revoked_by, at=at)

    def record_uses(self, uses: dict[str, dt.datetime]) -> None:
        self.writes.append(dict(uses))
        self.real.record_uses(uses)


@pytest.fixture
def counted(make_app: Callable[..., Flask]) -> Iterator[tuple[Counting, KeyWatch]]:
    """A watch whose writer turns every 0.05 s, on the records of the test's database."""
    app = make_app()
    counting = Counting(KeyRecords(app.extensions["stores"].database))
    watch = KeyWatch(counting, app.extensions["keywatch"].ring, poll_seconds=0.05)
    watch.start()
    yield counting, watch
    watch.close()


def test_last_use_is_written_at_most_once_a_minute_per_key(counted: tuple[Counting, KeyWatch]) -> None:
    counting, watch = counted
    for _ in range(40):
        watch.used("reader")
        watch.used("writer")
        time.sleep(0.01)  # several turns of the writer (every 0.05 s here)
    eventually(lambda: sum(len(write) for write in counting.writes) >= 2)
    time.sleep(0.2)
    per_key = [(key_id, minute) for write in counting.writes for key_id, minute in write.items()]
    # Twice at most, and then in two minutes: the loop may have crossed a minute's end.
    assert len(per_key) == len(set(per_key)) <= 4
    assert {key_id for key_id, _ in per_key} == {"reader", "writer"}


@pytest.mark.parametrize("failure", ["fails", "hangs"])
def test_a_last_use_that_cannot_be_written_neither_fails_nor_delays_a_request(
    make_app: Callable[..., Flask], keys: KeySet, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    back = threading.Event()
    write = KeyRecords.record_uses

    def down(self: KeyRecords, uses: dict[str, dt.datetime]) -> None:
        if failure == "fails":
            raise StoreUnavailable(1)
        back.wait(30)  # a database that takes the write and does not answer
        write(self, uses)

    monkeypatch.setattr(KeyRecords, "record_uses", down)
    app = make_app()
    client = app.test_client()
    started = time.monotonic()
    answers = [
        client.get("/v1/whoami", headers=bearer(key)).status_code for key in (keys.reader, keys.writer)
    ]
    time.sleep(1.5)  # the writer has met the failure by now
    answers += [client.get("/v1/whoami", headers=bearer(keys.reader)).status_code for _ in range(5)]
    assert answers == [200] * 7
    assert time.monotonic() - started < 10  # milliseconds each, plus the pause; a held write takes 30 s
    # Back: the minutes kept meanwhile are written on a later turn.
    monkeypatch.undo()
    back.set()
    records = KeyRecords(app.extensions["stores"].database)
    eventually(lambda: {"reader", "writer"} <= set(records.last_uses()))


def unavailable(self: KeyRecords) -> frozenset[str]:
    raise StoreUnavailable(2)


def test_revocations_read_before_the_database_failed_stay_in_force(
    make_app: Callable[..., Flask], keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    KeyRecords(app.extensions["stores"].database).revoke(
        "reader", reason=None, revoked_by="cli", at=dt.datetime.now(UTC)
    )
    client = app.test_client()
    eventually(lambda: client.get("/v1/whoami", headers=bearer(keys.reader)).status_code == 401)
    monkeypatch.setattr(KeyRecords, "revoked_ids", unavailable)
    time.sleep(1.5)  # more than a turn of the poller
    assert client.get("/v1/whoami", headers=bearer(keys.reader)).status_code == 401
    assert client.get("/v1/whoami", headers=bearer(keys.writer)).status_code == 200


class Overtaken:
    """Records whose first read of the revoked ids is overtaken: it answers (without the
    revocation) only after the second read (with it) has answered."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        self.second_answered = threading.Event()

    def revoked_ids(self) -> frozenset[str]:
        with self.lock:
            self.calls += 1
            call = self.calls
        if call == 1:
            assert self.second_answered.wait(10)
            return frozenset()
        if call == 2:
            self.second_answered.set()
            return frozenset({"reader"})
        raise StoreUnavailable(2)

    def revoke(self, key_id: str, *, reason: str | None, revoked_by: str, at: dt.datetime) -> object:
        raise AssertionError("not reported")

    def record_uses(self, uses: dict[str, dt.datetime]) -> None:
        pass


def test_a_read_that_started_earlier_never_replaces_a_later_one(make_app: Callable[..., Flask]) -> None:
    # The first request and the poller's first turn read at once; the older answer arrives last,
    # and every read after it fails: the revocation the later read saw must stay in force.
    records = Overtaken()
    watch = KeyWatch(records, make_app().extensions["keywatch"].ring, poll_seconds=0.05)
    watch.start()
    try:
        assert watch.revoked("reader") is True
    finally:
        watch.close()  # joins the poller: whatever its overtaken read does, it has done
    assert records.calls >= 2
    assert watch.revoked("reader") is True
    assert watch.revoked("writer") is False


def test_until_the_revocations_are_read_once_a_valid_key_gets_503_not_a_pass(
    make_app: Callable[..., Flask], keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(KeyRecords, "revoked_ids", unavailable)
    client = make_app().test_client()
    response = client.get("/v1/whoami", headers=bearer(keys.reader))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/whoami").status_code == 401  # no key: nothing to look up
    monkeypatch.undo()
    eventually(lambda: client.get("/v1/whoami", headers=bearer(keys.reader)).status_code == 200)


# --- the keys command -----------------------------------------------------------------------------


def log_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_keys_revoke_records_the_id_and_logs_one_json_line_saying_who_and_where(
    env: dict[str, str], records: KeyRecords, keys: KeySet
) -> None:
    done = keys_command("revoke", "--id", "reader", "--reason", "leaked in a CI log", env=env)
    assert done.returncode == 0, done.stderr
    assert "revoked reader" in done.stdout
    assert "note:" not in done.stdout  # reader is configured
    (line,) = log_lines(done.stderr)
    assert line["message"] == "key revoked"
    assert (line["key_id"], line["reason"], line["revoked_by"]) == ("reader", "leaked in a CI log", "cli")
    assert (line["user"], line["host"]) == (getpass.getuser(), socket.gethostname())
    assert records.revocations()["reader"].reason == "leaked in a CI log"
    again = keys_command("revoke", "--id", "reader", env=env)
    assert (again.returncode, log_lines(again.stderr)) == (0, [])
    assert "revoked already" in again.stdout


def test_keys_revoke_accepts_an_id_no_entry_has_and_says_so(env: dict[str, str], records: KeyRecords) -> None:
    done = keys_command("revoke", "--id", "gone-already", env=env)
    assert done.returncode == 0, done.stderr
    assert "note: no entry of the service's keys has the id gone-already" in done.stdout
    assert records.revoked_ids() == frozenset({"gone-already"})


def test_keys_unrevoke_undoes_a_revocation_and_logs_it(env: dict[str, str], records: KeyRecords) -> None:
    records.revoke("reader", reason=None, revoked_by="holder", at=dt.datetime.now(UTC))
    done = keys_command("unrevoke", "--id", "reader", env=env)
    assert done.returncode == 0, done.stderr
    (line,) = log_lines(done.stderr)
    assert (line["message"], line["key_id"], line["unrevoked_by"]) == ("key unrevoked", "reader", "cli")
    assert records.revoked_ids() == frozenset()
    again = keys_command("unrevoke", "--id", "reader", env=env)
    assert (again.returncode, again.stdout.strip()) == (0, "reader was not revoked: nothing changed")


def test_the_keys_command_opens_the_database_the_services_settings_name(
    env: dict[str, str], records: KeyRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``python -m`` opens for revoke, unrevoke and report is the database the service's
    workers read, from the same variables: a revocation made there reaches every worker."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with command_records() as opened_by_command:
        opened_by_command.revoke("reader", reason=None, revoked_by="cli", at=dt.datetime.now(UTC))
    assert records.revoked_ids() == frozenset({"reader"})


def service_of(env: Mapping[str, str]) -> Service:
    """What ``python -m`` hands the command, built from a test's environment."""

    def configured() -> KeyRing:
        return settings_from(env).keys

    def records() -> AbstractContextManager[Records]:
        return opened(database_settings_from(env))

    return Service(configured, records)


@pytest.mark.parametrize(
    "args",
    [("revoke", "--id"), ("unrevoke", "--id"), ("revoke", "--id", "ci", "--reason")],
    ids=["revoke", "unrevoke", "reason"],
)
def test_a_key_given_to_revoke_or_unrevoke_is_refused_and_never_echoed(
    env: dict[str, str],
    records: KeyRecords,
    keys: KeySet,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([*args, keys.reader.secret], service=service_of(env))
    assert stopped.value.code == 2
    printed = capsys.readouterr()
    assert keys.reader.secret[len(KEY_PREFIX) + 1 :][:12] not in printed.out + printed.err
    assert "holds a key" in printed.err or "no key" in printed.err
    assert records.revoked_ids() == frozenset()


def report(env: Mapping[str, str], capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert main(["report", "--json", *args], service=service_of(env)) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def test_keys_report_lists_every_configured_key_with_its_last_use_and_revocation(
    env: dict[str, str], records: KeyRecords, keys: KeySet, capsys: pytest.CaptureFixture[str]
) -> None:
    used = dt.datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    records.record_uses({"reader": used})
    records.revoke("writer", reason="left the team", revoked_by="cli", at=used + dt.timedelta(seconds=5))
    rows = {row["id"]: row for row in report(env, capsys)}
    assert set(rows) == {"reader", "writer", "other", "plain", "expired"}
    assert rows["reader"] == {
        "id": "reader",
        "tenant": "acme",
        "scopes": ["items:read"],
        "expires": None,
        "last_used": "2026-12-01T09:30Z",
        "revoked": None,
    }
    assert rows["writer"]["last_used"] is None
    assert rows["writer"]["revoked"] == {"reason": "left the team", "by": "cli", "at": "2026-12-01T09:30:05Z"}
    assert rows["expired"]["expires"] == "2020-01-01"
    assert main(["report"], service=service_of(env)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert (
        "reader: tenant=acme scopes=items:read expires=never last_used=2026-12-01T09:30Z not revoked" in lines
    )


def test_keys_report_stale_lists_the_keys_not_used_for_days_never_used_ones_included(
    env: dict[str, str], records: KeyRecords, capsys: pytest.CaptureFixture[str]
) -> None:
    now = dt.datetime.now(UTC)
    records.record_uses({"reader": now - dt.timedelta(days=1), "writer": now - dt.timedelta(days=40)})
    assert {row["id"] for row in report(env, capsys, "--stale", "30")} == {
        "writer",
        "other",
        "plain",
        "expired",
    }
    assert {row["id"] for row in report(env, capsys, "--stale", "60")} == {"other", "plain", "expired"}


def test_keys_report_without_the_services_keys_names_the_variable(
    env: dict[str, str], records: KeyRecords, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report"], service=service_of({k: v for k, v in env.items() if k != "API_KEYS"})) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.startswith("error: API_KEYS: not set")


def test_a_database_the_command_cannot_use_is_one_line_naming_its_setting(
    env: dict[str, str], tmp_path: Any
) -> None:
    if "ITEMS_DB" in env:  # no file there: never a new one, which no worker would read
        broken, variable = {**env, "ITEMS_DB": str(tmp_path / "elsewhere.sqlite3")}, "ITEMS_DB"
    else:  # nothing listens there
        broken = {
            **env,
            "DATABASE_URL": "postgresql://items:x@127.0.0.1:9/items",
            "DATABASE_CONNECT_TIMEOUT": "2",
        }
        variable = "DATABASE_URL"
    # As an operator runs it: nothing else of the process (a driver's warnings) adds a line.
    result = keys_command("revoke", "--id", "ci", env=broken)
    assert (result.returncode, result.stdout) == (1, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {variable}: ")
    assert not (tmp_path / "elsewhere.sqlite3").exists()


def test_revoke_unrevoke_and_report_need_the_services_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report"]) == 2
    assert "needs the service's settings" in capsys.readouterr().err


def test_keys_report_lines_say_never_and_who_revoked_and_why(
    env: dict[str, str], records: KeyRecords, keys: KeySet, capsys: pytest.CaptureFixture[str]
) -> None:
    at = dt.datetime(2026, 12, 1, 9, 30, 5, tzinfo=UTC)
    records.revoke("reader", reason="in a paste", revoked_by="cli", at=at)
    records.revoke("writer", reason=None, revoked_by="holder", at=at)
    assert main(["report"], service=service_of(env)) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["reader"] == (
        "tenant=acme scopes=items:read expires=never last_used=never"
        " revoked 2026-12-01T09:30:05Z by cli (in a paste)"
    )
    assert lines["writer"].endswith("revoked 2026-12-01T09:30:05Z by holder")
    assert (
        lines["expired"] == "tenant=default scopes=items:read expires=2020-01-01 last_used=never not revoked"
    )


@pytest.mark.parametrize(
    ("args", "accepted"),
    [
        (("report", "--stale", "36500"), True),
        (("report", "--stale", "1"), True),
        (("report", "--stale", "0"), False),
        (("report", "--stale", "36501"), False),
        (("report", "--stale", "-3"), False),
        (("report", "--stale", "a week"), False),
        (("revoke", "--id", "ci", "--reason", "r" * 200), True),
        (("revoke", "--id", "ci", "--reason", "r" * 201), False),
        (("revoke", "--id", "ci", "--reason", "two\nlines"), False),
        (("revoke", "--id", "not an id"), False),
        (("revoke", "--id", "ci~2"), True),
        (("unrevoke", "--id", ""), False),
    ],
)
def test_the_records_commands_take_what_they_document_and_refuse_the_rest(
    env: dict[str, str],
    records: KeyRecords,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    accepted: bool,
) -> None:
    if accepted:
        assert main(list(args), service=service_of(env)) == 0
    else:
        with pytest.raises(SystemExit) as stopped:
            main(list(args), service=service_of(env))
        assert stopped.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_keys_revoke_says_when_the_services_keys_cannot_be_read_here(
    env: dict[str, str], records: KeyRecords, capsys: pytest.CaptureFixture[str]
) -> None:
    unset = {k: v for k, v in env.items() if k != "API_KEYS"}
    assert main(["revoke", "--id", "ci"], service=service_of(unset)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "revoked ci: every worker of every server refuses it within 2 s, across restarts",
        "note: the service's keys cannot be read here, so ci was not checked; recorded anyway",
        "undo with: keys unrevoke --id ci",
    ]
    assert records.revoked_ids() == frozenset({"ci"})


def test_keys_revoke_logs_the_account_id_where_there_is_no_login_name(
    env: dict[str, str],
    records: KeyRecords,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def nameless() -> str:
        raise OSError("no login name")

    monkeypatch.setattr(getpass, "getuser", nameless)
    with caplog.at_level(logging.INFO):
        assert main(["revoke", "--id", "reader"], service=service_of(env)) == 0
    (line,) = [r for r in caplog.records if r.getMessage() == "key revoked"]
    assert (line.user, line.host, line.configured) == (str(os.getuid()), socket.gethostname(), True)


class Broken:
    """Records whose every call fails as a driver would, its message holding what it must not show."""

    variable = "THE_DATABASE"

    def __getattr__(self, name: str) -> Callable[..., None]:
        def fail(*args: object, **kwargs: object) -> None:
            raise LookupError("relation key_revocations at db.internal, password hunter2")

        return fail


def test_a_failing_database_is_one_line_with_its_setting_and_the_errors_type_only(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    @contextmanager
    def broken() -> Iterator[Records]:
        yield Broken()  # type: ignore[misc]

    service = Service(service_of(env).keys, broken)
    for command in (["revoke", "--id", "ci"], ["unrevoke", "--id", "ci"], ["report"]):
        assert main(command, service=service) == 1
        printed = capsys.readouterr()
        assert printed.out == ""
        assert printed.err == (
            "error: THE_DATABASE: the key records could not be read or written (LookupError); "
            "check that the database answers and that its schema is current (make migrate)\n"
        )


def logged(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == message]


def test_keys_revoke_and_unrevoke_say_what_they_did_and_log_each_change_once(
    env: dict[str, str],
    records: KeyRecords,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = service_of(env)
    with caplog.at_level(logging.INFO):
        assert main(["revoke", "--id", "reader", "--reason", "in a paste"], service=service) == 0
        assert capsys.readouterr().out.splitlines() == [
            "revoked reader: every worker of every server refuses it within 2 s, across restarts",
            "undo with: keys unrevoke --id reader",
        ]
        (line,) = logged(caplog, "key revoked")
        assert (line.key_id, line.reason, line.revoked_by, line.configured) == (
            "reader",
            "in a paste",
            "cli",
            True,
        )
        found = records.revocations()["reader"]
        assert (found.reason, found.revoked_by) == ("in a paste", "cli")
        assert abs(found.revoked_at - dt.datetime.now(UTC)) < dt.timedelta(minutes=5)

        assert main(["revoke", "--id", "reader"], service=service) == 0
        at = found.revoked_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert capsys.readouterr().out == f"reader was revoked already, on {at} by cli: nothing changed\n"
        assert len(logged(caplog, "key revoked")) == 1

        assert main(["revoke", "--id", "ghost"], service=service) == 0
        assert (
            "note: no entry of the service's keys has the id ghost; recorded anyway\n"
            in capsys.readouterr().out
        )

        assert main(["unrevoke", "--id", "reader"], service=service) == 0
        assert capsys.readouterr().out == "unrevoked reader: every worker accepts it again within 2 s\n"
        (line,) = logged(caplog, "key unrevoked")
        assert (line.key_id, line.unrevoked_by) == ("reader", "cli")
        assert (line.user, line.host) == (getpass.getuser(), socket.gethostname())
        assert records.revoked_ids() == frozenset({"ghost"})

        assert main(["unrevoke", "--id", "reader"], service=service) == 0
        assert capsys.readouterr().out == "reader was not revoked: nothing changed\n"
        assert len(logged(caplog, "key unrevoked")) == 1


class Recording:
    """Records that keep what they are asked to write."""

    variable = "THE_DATABASE"

    def __init__(self) -> None:
        self.revoked: list[tuple[str, str | None, str, dt.datetime]] = []

    def revoke(self, key_id: str, *, reason: str | None, revoked_by: str, at: dt.datetime) -> None:
        self.revoked.append((key_id, reason, revoked_by, at))


def test_keys_revoke_records_an_instant_in_utc(env: dict[str, str]) -> None:
    recording = Recording()

    @contextmanager
    def records() -> Iterator[Records]:
        yield recording  # type: ignore[misc]

    assert main(["revoke", "--id", "ci"], service=Service(service_of(env).keys, records)) == 0
    ((key_id, reason, by, at),) = recording.revoked
    assert (key_id, reason, by, at.utcoffset()) == ("ci", None, "cli", dt.timedelta(0))


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone nine hours ahead of UTC, as on a host set to Tokyo."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_keys_report_shows_utc_whatever_the_hosts_time_zone(
    far_from_utc: None, env: dict[str, str], records: KeyRecords, capsys: pytest.CaptureFixture[str]
) -> None:
    at = dt.datetime(2026, 12, 1, 23, 30, 5, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    records.revoke("writer", reason=None, revoked_by="cli", at=at)
    assert main(["report"], service=service_of(env)) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["writer"] == (
        "tenant=acme scopes=items:read,items:write expires=never last_used=never"
        " revoked 2026-12-01T14:30:05Z by cli"
    )
