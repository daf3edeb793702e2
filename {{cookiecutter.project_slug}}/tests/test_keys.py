"""Keys: format, entries, verification and the operator CLI."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import inspect
import io
import json
import operator
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from {{ cookiecutter.package_name }} import keys
from {{ cookiecutter.package_name }}.keys import (
    KEY_PREFIX,
    EntryError,
    ExpiredKey,
    KeyRing,
    MalformedKey,
    UnknownKey,
    cli,
    mint,
    parse_entry,
)
from {{ cookiecutter.package_name }}.settings import ConfigError, Invalid, rate_limits


def ring_of(*minted: keys.MintedKey) -> KeyRing:
    return KeyRing.from_text(KEY_PREFIX, ",".join(m.entry for m in minted))


def flip(secret: str, index: int) -> str:
    replacement = "A" if secret[index] != "A" else "B"
    return secret[:index] + replacement + secret[index + 1 :]


def test_new_key_has_prefix_256_random_bits_and_checksum() -> None:
    minted = mint(KEY_PREFIX, key_id="k", scopes=["items:read"])
    assert minted.secret.startswith(f"{KEY_PREFIX}_")
    body = minted.secret[len(KEY_PREFIX) + 1 :]
    assert len(body) == keys.BODY_LENGTH + keys.CHECKSUM_LENGTH
    assert re.fullmatch(keys.key_pattern(KEY_PREFIX), minted.secret)


def random_part(secret: str) -> int:
    """The number a key's body spells in base62, most significant digit first."""
    value = 0
    for char in secret[len(KEY_PREFIX) + 1 : -keys.CHECKSUM_LENGTH]:
        value = value * 62 + keys.ALPHABET.index(char)
    return value


def test_a_minted_keys_random_part_spreads_over_all_256_bits() -> None:
    """Every one of the 256 bits is 1 in some minted key and 0 in another: a generator that draws
    fewer bytes (8, zero-padded) leaves the high bits 0 in every key, and one that pins a bit
    leaves it constant.

    Cannot fail by chance: for uniform 256-bit values, one bit is constant across n keys with
    probability 2 * 2**-n, so some bit is with probability at most 256 * 2 * 2**-n; with
    n = 128 that is 2**-119."""
    values = [random_part(mint(KEY_PREFIX, key_id="k", scopes=["a:b"]).secret) for _ in range(128)]
    assert max(values) < 2**256
    ever_set = functools.reduce(operator.or_, values)
    always_set = functools.reduce(operator.and_, values)
    assert ever_set == 2**256 - 1, f"{256 - ever_set.bit_count()} of 256 bits are 0 in every key"
    assert always_set == 0, f"{always_set.bit_count()} of 256 bits are 1 in every key"


def test_new_keys_never_repeat() -> None:
    secrets_seen = {mint(KEY_PREFIX, key_id="k", scopes=["a:b"]).secret for _ in range(200)}
    assert len(secrets_seen) == 200


def test_entry_holds_a_digest_and_never_the_key() -> None:
    minted = mint(KEY_PREFIX, key_id="ci", scopes=["items:read", "items:write"], tenant="acme")
    assert minted.secret not in minted.entry
    assert minted.secret[len(KEY_PREFIX) + 1 :][:12] not in minted.entry
    assert parse_entry(minted.entry) == minted.key


def test_entry_round_trips_expiry() -> None:
    minted = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"], expires=dt.date(2030, 5, 1))
    assert "expires=2030-05-01" in minted.entry
    assert parse_entry(minted.entry).expires == dt.date(2030, 5, 1)


def test_valid_key_is_accepted() -> None:
    minted = mint(KEY_PREFIX, key_id="ci", scopes=["items:read"], tenant="acme")
    found = ring_of(minted).verify(minted.secret)
    assert (found.key_id, found.tenant, found.scopes) == ("ci", "acme", frozenset({"items:read"}))


def test_several_keys_are_valid_at_once_for_rotation() -> None:
    old = mint(KEY_PREFIX, key_id="old", scopes=["a:b"])
    new = mint(KEY_PREFIX, key_id="new", scopes=["a:b"])
    ring = ring_of(old, new)
    assert ring.verify(old.secret).key_id == "old"
    assert ring.verify(new.secret).key_id == "new"
    with pytest.raises(UnknownKey):
        ring_of(new).verify(old.secret)


def test_unknown_key_is_refused() -> None:
    configured = mint(KEY_PREFIX, key_id="a", scopes=["a:b"])
    stranger = mint(KEY_PREFIX, key_id="b", scopes=["a:b"])
    with pytest.raises(UnknownKey):
        ring_of(configured).verify(stranger.secret)


@pytest.mark.parametrize("position", [0, 6, 20, -7, -1])
def test_mistyped_key_is_refused_before_any_lookup(position: int) -> None:
    minted = mint(KEY_PREFIX, key_id="a", scopes=["a:b"])
    ring = ring_of(minted)
    assert not ring.is_well_formed(flip(minted.secret, position))
    with pytest.raises(MalformedKey):
        ring.verify(flip(minted.secret, position))


@pytest.mark.parametrize(
    "presented",
    ["", "x", "Bearer", "é" * 55, "\x00" * 55, "A" * 8192, f"{KEY_PREFIX}_" + "0" * 49],
    ids=["empty", "short", "word", "non-ascii", "nul", "8k", "bad-checksum"],
)
def test_garbage_is_malformed_never_an_error(presented: str) -> None:
    ring = ring_of(mint(KEY_PREFIX, key_id="a", scopes=["a:b"]))
    with pytest.raises(MalformedKey):
        ring.verify(presented)


def test_expired_key_is_refused_from_its_expiry_date() -> None:
    minted = mint(KEY_PREFIX, key_id="a", scopes=["a:b"], expires=dt.date(2030, 1, 1))
    ring = ring_of(minted)
    assert ring.verify(minted.secret, now=dt.datetime(2029, 12, 31, 23, 59, 59, tzinfo=dt.UTC)).key_id == "a"
    with pytest.raises(ExpiredKey):
        ring.verify(minted.secret, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))


@pytest.fixture
def zone_on_another_date(monkeypatch: pytest.MonkeyPatch) -> Iterator[dt.date]:
    """Set this process's time zone to one whose date is not UTC's; yield that local date. In the
    UTC morning a zone 12 hours behind is still on yesterday; later, one 14 hours ahead is on
    tomorrow."""
    now = dt.datetime.now(dt.UTC)
    if now.minute == 59 and now.hour in (11, 23):
        # The choice holds for a test's second, not across noon or midnight (UTC).
        time.sleep(61 - now.second)
        now = dt.datetime.now(dt.UTC)
    behind = now.hour < 12
    monkeypatch.setenv("TZ", "Etc/GMT+12" if behind else "Etc/GMT-14")
    time.tzset()
    yield now.date() + dt.timedelta(days=-1 if behind else 1)
    monkeypatch.undo()
    time.tzset()


def test_expiry_is_judged_in_utc_whatever_the_servers_time_zone(zone_on_another_date: dt.date) -> None:
    """The key expires today (UTC) where the server's zone is still on yesterday, or tomorrow where
    it is already there: refused in the first case, accepted in the second, as in UTC."""
    today = dt.datetime.now(dt.UTC).date()
    minted = mint(KEY_PREFIX, key_id="a", scopes=["a:b"], expires=max(zone_on_another_date, today))
    ring = ring_of(minted)
    if zone_on_another_date < today:
        with pytest.raises(ExpiredKey):
            ring.verify(minted.secret)
    else:
        assert ring.verify(minted.secret).key_id == "a"


def test_cli_new_judges_the_expiry_in_utc(
    zone_on_another_date: dt.date, capsys: pytest.CaptureFixture[str]
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    expires = max(zone_on_another_date, today).isoformat()
    code = cli.main(["new", "--id", "ci", "--scope", "a:b", "--expires", expires, "--json"])
    assert code == (2 if zone_on_another_date < today else 0), capsys.readouterr()


def test_raw_key_in_configuration_is_refused_by_position() -> None:
    good = mint(KEY_PREFIX, key_id="a", scopes=["a:b"])
    raw = mint(KEY_PREFIX, key_id="b", scopes=["a:b"]).secret
    with pytest.raises(EntryError, match="entry 2 is a raw key") as error:
        KeyRing.from_text(KEY_PREFIX, f"{good.entry}\n{raw}")
    assert raw not in str(error.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("just-some-text", "not an entry"),
        ("id=a;scopes=a:b", "no sha256"),
        ("id=a;sha256=" + "a" * 64, "no scopes"),
        ("id=a;scopes=a:b;sha256=xyz", "64 lowercase"),
        ("id=a;scopes=a:b;sha256=" + "a" * 64 + ";expires=tomorrow", "YYYY-MM-DD"),
        ("id=a;scopes=a:b;sha256=" + "a" * 64 + ";colour=red", "unknown field"),
        ("id=a b;scopes=a:b;sha256=" + "a" * 64, "id must be"),
        ("id=a=b;scopes=a:b;sha256=" + "a" * 64, "id must be"),
        ("id=a;scopes=A B;sha256=" + "a" * 64, "scopes must"),
        ("id=a;scopes=a:b;sha256=" + "0" * 64, "placeholder"),
    ],
    ids=[
        "text",
        "no-digest",
        "no-scopes",
        "bad-digest",
        "bad-date",
        "unknown",
        "bad-id",
        "equals-sign-in-id",
        "bad-scope",
        "placeholder",
    ],
)
def test_malformed_entry_is_refused_naming_the_problem_not_the_value(entry: str, message: str) -> None:
    with pytest.raises(EntryError, match=message) as error:
        KeyRing.from_text(KEY_PREFIX, entry)
    assert str(error.value).startswith("entry 1 ")
    assert "red" not in str(error.value)
    assert "tomorrow" not in str(error.value)


def test_duplicate_ids_are_refused_by_position() -> None:
    first = mint(KEY_PREFIX, key_id="same", scopes=["a:b"])
    second = mint(KEY_PREFIX, key_id="same", scopes=["a:b"])
    with pytest.raises(EntryError, match="entry 2 has the same id as entry 1") as error:
        ring_of(first, second)
    assert "same" not in str(error.value).replace("same id", "")


@pytest.mark.parametrize("field", ["id", "tenant"])
def test_a_key_pasted_as_id_or_tenant_is_refused_and_never_echoed(field: str) -> None:
    pasted = mint(KEY_PREFIX, key_id="k", scopes=["a:b"]).secret
    original = "id=k" if field == "id" else "tenant=default"
    entry = mint(KEY_PREFIX, key_id="k", scopes=["a:b"]).entry.replace(original, f"{field}={pasted}", 1)
    with pytest.raises(EntryError, match=f"{field} holds an API key") as error:
        KeyRing.from_text(KEY_PREFIX, entry)
    assert pasted[len(KEY_PREFIX) + 1 :][:12] not in str(error.value)


def test_a_key_pasted_as_a_field_name_is_never_echoed() -> None:
    pasted = mint(KEY_PREFIX, key_id="k", scopes=["a:b"]).secret
    entry = f"{mint(KEY_PREFIX, key_id='k', scopes=['a:b']).entry};{pasted}=x"
    with pytest.raises(EntryError, match="unknown field") as error:
        KeyRing.from_text(KEY_PREFIX, entry)
    assert pasted[len(KEY_PREFIX) + 1 :][:12] not in str(error.value)


def test_duplicate_digests_are_refused() -> None:
    minted = mint(KEY_PREFIX, key_id="one", scopes=["a:b"])
    twin = minted.entry.replace("id=one", "id=two")
    with pytest.raises(EntryError, match="same digest"):
        KeyRing.from_text(KEY_PREFIX, f"{minted.entry},{twin}")


def test_empty_configuration_is_refused() -> None:
    with pytest.raises(EntryError, match="no entries"):
        KeyRing.from_text(KEY_PREFIX, " \n # only a comment\n")


def test_entries_split_on_commas_and_newlines_with_comments() -> None:
    a, b, c = (mint(KEY_PREFIX, key_id=n, scopes=["a:b"]) for n in "abc")
    text = f"# keys\n{a.entry},{b.entry}\n\n{c.entry}  # rotated in\n"
    assert [key.key_id for key in KeyRing.from_text(KEY_PREFIX, text)] == ["a", "b", "c"]


def test_cli_new_prints_the_key_once_and_its_entry(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["new", "--id", "ci", "--scope", "items:read", "--scope", "items:write", "--tenant", "acme"]
    )
    out = capsys.readouterr().out
    secret = re.search(keys.key_pattern(KEY_PREFIX), out)
    assert code == 0
    assert secret is not None
    assert out.count(secret.group(0)) == 1
    entry = next(line.strip() for line in out.splitlines() if line.strip().startswith("id="))
    assert ring_of_text(entry).verify(secret.group(0)).scopes == {"items:read", "items:write"}
    assert out.splitlines() == [
        "key (shown once, give it to the client):",
        f"  {secret.group(0)}",
        "entry (add it to API_KEYS or API_KEYS_FILE):",
        f"  {entry}",
    ]


def ring_of_text(text: str) -> KeyRing:
    return KeyRing.from_text(KEY_PREFIX, text)


def test_cli_new_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["new", "--id", "ci", "--scope", "a:b", "--expires", "2031-02-03", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["id"] == "ci"
    assert printed["expires"] == "2031-02-03"
    assert printed["tenant"] == "default"
    assert (
        ring_of_text(printed["entry"])
        .verify(printed["key"], now=dt.datetime(2031, 1, 1, tzinfo=dt.UTC))
        .key_id
        == "ci"
    )


@pytest.mark.parametrize("when", ["2020-01-01", dt.datetime.now(dt.UTC).date().isoformat()])
def test_cli_new_refuses_an_expiry_that_is_not_in_the_future(
    capsys: pytest.CaptureFixture[str], when: str
) -> None:
    assert cli.main(["new", "--id", "ci", "--scope", "a:b", "--expires", when]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --expires is not in the future")
    assert not re.search(keys.key_pattern(KEY_PREFIX), captured.out)


def test_cli_new_refuses_a_bad_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["new", "--id", "no spaces", "--scope", "a:b"]) == 2
    assert "id must be" in capsys.readouterr().err


def test_cli_check_describes_entries_without_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    minted = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"], tenant="acme")
    assert cli.main(["check", "--json", minted.entry]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"id": "ci", "tenant": "acme", "scopes": ["a:b"], "expires": None, "limit": None, "nets": []}
    ]


def test_cli_check_rejects_a_raw_key_without_echoing_it(capsys: pytest.CaptureFixture[str]) -> None:
    raw = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"]).secret
    assert cli.main(["check", raw]) == 1
    captured = capsys.readouterr()
    assert "raw key" in captured.err
    assert raw not in captured.err + captured.out


def test_digest_is_sha256_of_the_key() -> None:
    import hashlib

    secret = f"{KEY_PREFIX}_{secrets.token_hex(8)}"
    assert keys.digest(secret) == hashlib.sha256(secret.encode()).digest()


# --- expiry to the minute, per-key limits and networks, roll ---------------------------------

UTC = dt.UTC


def test_entries_without_the_newer_fields_keep_working() -> None:
    minted = mint(KEY_PREFIX, key_id="old", scopes=["a:b"])
    written_before = f"id=old;tenant=default;scopes=a:b;expires=2030-01-01;sha256={minted.key.digest.hex()}"
    key = parse_entry(written_before)
    assert (key.expires, key.limit, key.nets) == (dt.date(2030, 1, 1), None, ())
    assert key.entry() == written_before


def test_entry_round_trips_an_instant_a_limit_and_networks() -> None:
    minted = mint(
        KEY_PREFIX,
        key_id="ci",
        scopes=["a:b"],
        expires=dt.datetime(2030, 5, 1, 12, 30, tzinfo=UTC),
        limit="10/second;1000 per hour",
        nets=[keys.parse_network("10.0.0.0/8"), keys.parse_network("2001:db8::/32")],
    )
    assert (
        "expires=2030-05-01T12:30Z;limit=10/second+1000 per hour;nets=10.0.0.0/8+2001:db8::/32;"
        in minted.entry
    )
    assert parse_entry(minted.entry) == minted.key
    assert minted.key.limit == "10/second;1000 per hour"


@pytest.fixture
def server_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set this process's time zone, as a POSIX TZ string (no zone database needed)."""

    def set_zone(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_an_instant_is_written_in_utc(server_zone: Callable[[str], None]) -> None:
    server_zone("ZONE-5")  # five hours ahead of UTC: a local time would be written as another instant
    noon_in_paris = dt.datetime(2030, 1, 1, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    minted = mint(KEY_PREFIX, key_id="a", scopes=["a:b"], expires=noon_in_paris)
    assert "expires=2030-01-01T12:00Z" in minted.entry
    assert keys.refused_from(parse_entry(minted.entry).expires or dt.date.max) == noon_in_paris


def test_an_instant_is_refused_from_that_minute_utc() -> None:
    minted = mint(KEY_PREFIX, key_id="a", scopes=["a:b"], expires=keys.parse_expiry("2030-01-01T12:00Z"))
    ring = ring_of(minted)
    assert ring.verify(minted.secret, now=dt.datetime(2030, 1, 1, 11, 59, 59, 999999, tzinfo=UTC))
    with pytest.raises(ExpiredKey):
        ring.verify(minted.secret, now=dt.datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert ring.verify(minted.secret, now=dt.datetime(2030, 1, 1, 13, 59, tzinfo=plus_two))
    with pytest.raises(ExpiredKey):
        ring.verify(minted.secret, now=dt.datetime(2030, 1, 1, 14, 0, tzinfo=plus_two))


@pytest.mark.parametrize(
    "expires",
    ["2030-01-01T12:00+01:00", "2030-01-01T12:00:30Z", "2030-01-01T12:00", "2030-01-01T25:00Z", "2030-02-30"],
    ids=["offset", "seconds", "no-zone", "hour-25", "february-30"],
)
def test_an_expiry_is_a_date_or_a_utc_instant_to_the_minute(expires: str) -> None:
    entry = mint(KEY_PREFIX, key_id="a", scopes=["a:b"]).entry.replace(
        ";sha256", f";expires={expires};sha256"
    )
    with pytest.raises(EntryError, match="expires must be a date, YYYY-MM-DD, or an instant") as error:
        KeyRing.from_text(KEY_PREFIX, entry)
    assert expires not in str(error.value)


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("as many as you like", "limit must be a rate limit"),
        ("10 per fortnight", "limit must be a rate limit"),
        ("", "limit must be a rate limit"),
        ("0 per minute", "at least one request per window"),
        ("10 per 0 minutes", "at least one request per window"),
        ("10/second+0/hour", "at least one request per window"),
    ],
    ids=["words", "unknown-unit", "empty", "zero-amount", "zero-window", "zero-in-second-window"],
)
def test_a_bad_limit_is_refused_without_echoing_it(limit: str, message: str) -> None:
    entry = mint(KEY_PREFIX, key_id="a", scopes=["a:b"]).entry.replace(";sha256", f";limit={limit};sha256")
    with pytest.raises(EntryError, match=message) as error:
        KeyRing.from_text(KEY_PREFIX, f"{entry}")
    assert str(error.value).startswith("entry 1 limit ")
    assert not limit or limit not in str(error.value)


@pytest.mark.parametrize(
    "limit",
    [
        "100 per minute",
        "10/second",
        "5 per 10 minutes",
        "1000 PER HOUR",
        "2/day",
        "1 per minute",
        "1/second",
        "10 per 1 hour",
        "1 per 1 second",
        "0 per minute",
        "10 per 0 seconds",
        "10 per 00 seconds",
        "ten per minute",
        "10 per fortnight",
        "10 per",
        "10/second;100/hour",
        "10/second,0/hour",
        "10/hour|5/day",
        "10/hour;",
        "10/hour 5/day",
        "10 / minute",
        "10per minute",
        "10/HOURS",
        "10/0hour",
        "\uff110/hour",
        "5",
    ],
)
def test_an_entry_limit_follows_the_same_rules_as_ratelimit_default(limit: str) -> None:
    try:
        rate_limits(limit)
        service_accepts = True
    except Invalid:
        service_accepts = False
    try:
        keys.parse_limit(limit)
        entry_accepts = True
    except EntryError:
        entry_accepts = False
    assert entry_accepts == service_accepts


@pytest.mark.parametrize(
    "nets",
    ["192.0.2.1/24", "example.com", "", "192.0.2.0/33", "192.0.2.0/24+", "192.0.2.0/24 198.51.100.0/24"],
    ids=["host-bits", "name", "empty", "prefix-33", "trailing-plus", "space"],
)
def test_bad_networks_are_refused_without_echoing_them(nets: str) -> None:
    entry = mint(KEY_PREFIX, key_id="a", scopes=["a:b"]).entry.replace(";sha256", f";nets={nets};sha256")
    with pytest.raises(EntryError, match="nets must be networks") as error:
        KeyRing.from_text(KEY_PREFIX, entry)
    assert not nets or nets not in str(error.value)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("2001:db8:1::5", True),
        ("192.0.2.1", False),
        ("2001:db9::1", False),
        ("", False),
        (None, False),
        ("not an address", False),
    ],
)
def test_a_key_with_networks_is_allowed_only_from_them(address: str | None, allowed: bool) -> None:
    key = parse_entry(
        mint(KEY_PREFIX, key_id="a", scopes=["a:b"]).entry.replace(
            ";sha256", ";nets=10.0.0.0/8+2001:db8::/32;sha256"
        )
    )
    assert key.allows(address) is allowed


def test_a_key_without_networks_is_allowed_from_anywhere() -> None:
    key = mint(KEY_PREFIX, key_id="a", scopes=["a:b"]).key
    assert key.allows("192.0.2.1")
    assert key.allows("2001:db8::1")


def test_roll_keeps_tenant_scopes_limit_and_networks_under_the_next_generation() -> None:
    old = mint(
        KEY_PREFIX,
        key_id="ci-deploy",
        scopes=["items:read", "items:write"],
        tenant="acme",
        limit="50 per minute",
        nets=[keys.parse_network("10.0.0.0/8")],
    )
    successor, retired = keys.roll(
        KEY_PREFIX, old.key, overlap=dt.timedelta(hours=2), now=dt.datetime.now(UTC)
    )
    assert successor.key.key_id == "ci-deploy~2"
    new = successor.key
    assert (new.tenant, new.scopes, new.limit, new.nets) == (
        old.key.tenant,
        old.key.scopes,
        "50 per minute",
        old.key.nets,
    )
    assert new.expires is None
    assert successor.secret != old.secret
    assert retired.digest == old.key.digest
    assert (
        ring_of_text(f"{retired.entry()}\n{successor.entry}").verify(successor.secret).key_id == "ci-deploy~2"
    )


@pytest.mark.parametrize(
    ("key_id", "successor"),
    [
        ("ci", "ci~2"),
        ("ci~2", "ci~3"),
        ("ci~9", "ci~10"),
        ("ci~99999", "ci~100000"),
        ("release.2024", "release.2024~2"),
        ("ci-deploy.2", "ci-deploy.2~2"),
        ("v1.0", "v1.0~2"),
        ("ends.with.a.dot.", "ends.with.a.dot.~2"),
        ("ends-with-a-dash-", "ends-with-a-dash-~2"),
        ("7", "7~2"),
        ("a" * 64, "a" * 64 + "~2"),
        ("a" * 63 + "9~999998", "a" * 63 + "9~999999"),
    ],
    ids=[
        "first",
        "second",
        "tenth",
        "hundred-thousandth",
        "a-year-is-a-name",
        "a-name-ending-in-a-number",
        "version",
        "trailing-dot",
        "trailing-dash",
        "digit",
        "64-characters",
        "64-characters-last-generation",
    ],
)
def test_roll_gives_the_stem_the_next_generation_after_a_tilde(key_id: str, successor: str) -> None:
    old = mint(KEY_PREFIX, key_id=key_id, scopes=["a:b"]).key
    rolled, _ = keys.roll(KEY_PREFIX, old, overlap=dt.timedelta(hours=1), now=dt.datetime.now(UTC))
    assert rolled.key.key_id == successor
    assert parse_entry(rolled.entry).key_id == successor


def test_a_successor_id_never_collides_with_a_name() -> None:
    """Every name an operator may choose, including those ending in a number or a dot, rolls to
    an id no name can be: the generation is after a "~", which names never hold."""
    names = ["ci", "ci.2", "ci-2", "ci_2", "ci2", "release.2024", "release.2025", "v1.0", "a" * 64]
    successors = {keys.successor_id(name) for name in names}
    assert len(successors) == len(names)
    assert not [s for s in successors if keys.TENANT_PATTERN.fullmatch(s) or s in names]


def test_many_generations_keep_the_stem_and_count_up() -> None:
    key = mint(KEY_PREFIX, key_id="ci-deploy", scopes=["a:b"]).key
    seen = [key.key_id]
    for _ in range(30):
        successor, _ = keys.roll(KEY_PREFIX, key, overlap=dt.timedelta(hours=1), now=dt.datetime.now(UTC))
        key = successor.key
        seen.append(key.key_id)
    assert seen == ["ci-deploy", *(f"ci-deploy~{generation}" for generation in range(2, 32))]


def test_the_last_generation_is_refused_with_advice_to_mint_a_new_id() -> None:
    old = mint(KEY_PREFIX, key_id="ci~999999", scopes=["a:b"]).key
    with pytest.raises(EntryError, match="last generation"):
        keys.roll(KEY_PREFIX, old, overlap=dt.timedelta(hours=1), now=dt.datetime.now(UTC))


@pytest.mark.parametrize(
    "key_id",
    ["ci~1", "ci~0", "ci~02", "ci~", "~2", "ci~2~3", "ci~1000000", "a" * 65, "a" * 64 + "~x", "ci-~2-x"],
)
def test_an_id_has_one_spelling_per_generation(key_id: str) -> None:
    with pytest.raises(EntryError, match="id must be 1-64 letters"):
        mint(KEY_PREFIX, key_id=key_id, scopes=["a:b"])


def test_a_tenant_has_no_generation() -> None:
    with pytest.raises(EntryError, match="tenant must be 1-64 letters"):
        mint(KEY_PREFIX, key_id="ci", scopes=["a:b"], tenant="acme~2")


def test_roll_expires_the_old_entry_overlap_later_rounded_up_to_the_minute() -> None:
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"]).key
    now = dt.datetime(2030, 1, 1, 10, 15, 20, tzinfo=UTC)
    _, retired = keys.roll(KEY_PREFIX, old, overlap=dt.timedelta(hours=6), now=now)
    assert retired.expires == dt.datetime(2030, 1, 1, 16, 16, tzinfo=UTC)
    assert "expires=2030-01-01T16:16Z" in retired.entry()
    on_the_minute = now.replace(second=0)
    _, retired = keys.roll(KEY_PREFIX, old, overlap=dt.timedelta(hours=1), now=on_the_minute)
    assert retired.expires == dt.datetime(2030, 1, 1, 11, 15, tzinfo=UTC)
    just_after = on_the_minute.replace(microsecond=1)
    _, retired = keys.roll(KEY_PREFIX, old, overlap=dt.timedelta(hours=1), now=just_after)
    assert retired.expires == dt.datetime(2030, 1, 1, 11, 16, tzinfo=UTC)


def test_roll_rounds_up_to_a_utc_minute_whatever_the_servers_zone(server_zone: Callable[[str], None]) -> None:
    """Entries hold UTC minutes: rounded in a zone whose offset has seconds, the printed expiry
    would fall before the overlap ends."""
    server_zone("LMT+0:44:30")
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"]).key
    now = dt.datetime(2030, 1, 1, 10, 15, 20, tzinfo=UTC)
    _, retired = keys.roll(KEY_PREFIX, old, overlap=dt.timedelta(hours=6), now=now)
    assert retired.expires == dt.datetime(2030, 1, 1, 16, 16, tzinfo=UTC)
    assert "expires=2030-01-01T16:16Z" in retired.entry()


def test_roll_never_extends_an_earlier_expiry() -> None:
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"], expires=dt.date(2030, 1, 2)).key
    _, retired = keys.roll(
        KEY_PREFIX, old, overlap=dt.timedelta(hours=48), now=dt.datetime(2030, 1, 1, tzinfo=UTC)
    )
    assert retired.expires == dt.date(2030, 1, 2)


def test_roll_leaves_an_entry_alone_that_expires_as_the_overlap_ends() -> None:
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"], expires=dt.date(2030, 1, 2)).key
    _, retired = keys.roll(
        KEY_PREFIX, old, overlap=dt.timedelta(hours=24), now=dt.datetime(2030, 1, 1, tzinfo=UTC)
    )
    assert retired == old
    assert retired.entry() == old.entry()


def secret_in(text: str) -> str:
    found = re.findall(keys.key_pattern(KEY_PREFIX), text)
    assert len(found) == 1, text
    return str(found[0])


def test_cli_roll_reads_stdin_and_prints_the_key_once_the_entry_and_the_old_entry(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"], tenant="acme")
    monkeypatch.setattr("sys.stdin", io.StringIO(f"# the entry to roll\n{old.entry}\n"))
    before = dt.datetime.now(UTC)
    assert cli.main(["roll", "--overlap", "24"]) == 0
    out = capsys.readouterr().out
    secret = secret_in(out)
    entries = [line.strip() for line in out.splitlines() if line.strip().startswith("id=")]
    assert len(entries) == 2
    ring = ring_of_text("\n".join(entries))
    assert ring.verify(secret).key_id == "ci~2"
    retired = ring.verify(old.secret)
    assert retired.expires is not None
    assert (
        before + dt.timedelta(hours=24)
        <= keys.refused_from(retired.expires)
        <= before + dt.timedelta(hours=24, minutes=2)
    )
    refused = keys.format_expiry(retired.expires)
    assert out.splitlines()[::2] == [
        "key (shown once, give it to the client):",
        "entry (add it to API_KEYS or API_KEYS_FILE):",
        f"old entry (replace the old one with it; its key is refused from {refused}):",
    ]


def test_cli_roll_json_has_key_entry_and_old_entry(capsys: pytest.CaptureFixture[str]) -> None:
    old = mint(
        KEY_PREFIX, key_id="ci", scopes=["a:b"], limit="5/second", nets=[keys.parse_network("192.0.2.0/24")]
    )
    assert cli.main(["roll", old.entry, "--overlap", "0.5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"key", "entry", "old_entry"}
    successor = ring_of_text(printed["entry"]).verify(printed["key"])
    assert (successor.key_id, successor.limit, successor.nets) == ("ci~2", "5/second", old.key.nets)
    assert parse_entry(printed["old_entry"]).digest == old.key.digest


def test_cli_roll_gives_the_successor_the_expiry_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"])
    expires = (dt.datetime.now(UTC) + dt.timedelta(days=30)).date()
    assert cli.main(["roll", old.entry, "--overlap", "1", "--expires", expires.isoformat(), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert parse_entry(printed["entry"]).expires == expires
    assert parse_entry(printed["old_entry"]).expires != expires


@pytest.mark.parametrize("when", ["2020-01-01", dt.datetime.now(dt.UTC).date().isoformat()])
def test_cli_roll_refuses_an_expiry_that_is_not_in_the_future(
    capsys: pytest.CaptureFixture[str], when: str
) -> None:
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"])
    assert cli.main(["roll", old.entry, "--overlap", "1", "--expires", when]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --expires is not in the future")
    assert captured.out == ""


def test_cli_roll_takes_an_overlap_of_up_to_a_year(capsys: pytest.CaptureFixture[str]) -> None:
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"])
    before = dt.datetime.now(UTC)
    assert cli.main(["roll", old.entry, "--overlap", str(keys.MAX_OVERLAP_HOURS), "--json"]) == 0
    retired = parse_entry(json.loads(capsys.readouterr().out)["old_entry"])
    assert retired.expires is not None
    assert keys.refused_from(retired.expires) - before >= dt.timedelta(days=365)


def test_cli_roll_counts_the_overlap_in_real_hours_across_a_daylight_saving_change(
    capsys: pytest.CaptureFixture[str], server_zone: Callable[[str], None]
) -> None:
    """The server's clock moves an hour ahead at the next UTC midnight: 24 hours from now are
    still 24 hours, not 24 hours on the local clock."""
    now = dt.datetime.now(UTC)
    if now.hour == 23 and now.minute == 59:
        # The change must come after the roll's clock reading, not during the test's second.
        time.sleep(61 - now.second)
        now = dt.datetime.now(UTC)
    first_day = (now.date() + dt.timedelta(days=1)).timetuple().tm_yday - 1  # POSIX n: from 0
    server_zone(f"STD0DST-1,{first_day}/0,{(first_day + 100) % 365}/0")
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"])
    before = dt.datetime.now(UTC)
    assert cli.main(["roll", old.entry, "--overlap", "24", "--json"]) == 0
    after = dt.datetime.now(UTC)
    retired = parse_entry(json.loads(capsys.readouterr().out)["old_entry"])
    assert retired.expires is not None
    day = dt.timedelta(hours=24)
    assert before + day <= keys.refused_from(retired.expires) <= after + day + dt.timedelta(minutes=1)


@pytest.mark.parametrize("overlap", ["0", "-1", "nan", "inf", "8761", "soon"])
def test_cli_roll_refuses_an_overlap_that_is_not_a_positive_number_of_hours(
    capsys: pytest.CaptureFixture[str], overlap: str
) -> None:
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"])
    with pytest.raises(SystemExit):
        cli.main(["roll", old.entry, "--overlap", overlap])
    captured = capsys.readouterr()
    assert "expected a number of hours" in captured.err
    assert not re.search(keys.key_pattern(KEY_PREFIX), captured.out)


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("raw-key", "that is a raw key: roll its entry, not the key"),
        ("two-entries", "give exactly one entry to roll"),
        ("none", "give exactly one entry to roll"),
        ("broken", "entry is not an entry printed by 'keys new'"),
    ],
)
def test_cli_roll_refuses_anything_but_one_entry_without_echoing_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, given: str, problem: str
) -> None:
    a, b = mint(KEY_PREFIX, key_id="a", scopes=["a:b"]), mint(KEY_PREFIX, key_id="b", scopes=["a:b"])
    text = {
        "raw-key": a.secret,
        "two-entries": f"{a.entry}\n{b.entry}",
        "none": "# nothing\n",
        "broken": "id=a;x",
    }
    monkeypatch.setattr("sys.stdin", io.StringIO(text[given]))
    assert cli.main(["roll", "--overlap", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {problem}")
    assert captured.out == ""
    assert a.secret not in captured.err


def test_cli_new_takes_a_limit_networks_and_an_instant(capsys: pytest.CaptureFixture[str]) -> None:
    when = (dt.datetime.now(UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%MZ")
    argv = ["new", "--id", "ci", "--scope", "a:b", "--limit", "10/second;1000/hour", "--expires", when]
    assert cli.main([*argv, "--net", "10.0.0.0/8", "--net", "2001:db8::/32", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["limit"], printed["nets"], printed["expires"]) == (
        "10/second;1000/hour",
        ["10.0.0.0/8", "2001:db8::/32"],
        when,
    )
    assert f"expires={when};limit=10/second+1000/hour;nets=10.0.0.0/8+2001:db8::/32;" in printed["entry"]


def test_cli_new_refuses_an_instant_that_is_not_in_the_future(capsys: pytest.CaptureFixture[str]) -> None:
    when = dt.datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ")
    assert cli.main(["new", "--id", "ci", "--scope", "a:b", "--expires", when]) == 2
    captured = capsys.readouterr()
    assert "not in the future" in captured.err
    assert not re.search(keys.key_pattern(KEY_PREFIX), captured.out)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--limit", "0 per minute", "at least one request"),
        ("--limit", "lots", "limit must be a rate limit"),
        ("--net", "10.0.0.1/8", "expected a network"),
        ("--expires", "next week", "expected YYYY-MM-DD or YYYY-MM-DDTHH:MMZ"),
    ],
)
def test_cli_new_refuses_a_bad_limit_network_or_expiry_before_minting(
    capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["new", "--id", "ci", "--scope", "a:b", option, value])
    captured = capsys.readouterr()
    assert message in captured.err
    assert not re.search(keys.key_pattern(KEY_PREFIX), captured.out)


def test_cli_check_shows_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    full = mint(
        KEY_PREFIX,
        key_id="full",
        scopes=["a:b", "c:d"],
        tenant="acme",
        expires=dt.datetime(2031, 2, 3, 4, 5, tzinfo=UTC),
        limit="10/second;1000/hour",
        nets=[keys.parse_network("10.0.0.0/8"), keys.parse_network("2001:db8::/32")],
    )
    plain = mint(KEY_PREFIX, key_id="plain", scopes=["a:b"])
    assert cli.main(["check", full.entry, plain.entry]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "full: tenant=acme scopes=a:b,c:d expires=2031-02-03T04:05Z limit=10/second;1000/hour "
        "nets=10.0.0.0/8,2001:db8::/32",
        "plain: tenant=default scopes=a:b expires=never limit=RATELIMIT_DEFAULT nets=any",
    ]


def test_cli_check_lists_each_entry_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    lasting = mint(KEY_PREFIX, key_id="ci", scopes=["b:c", "a:b"], tenant="acme").entry
    expiring = mint(KEY_PREFIX, key_id="old", scopes=["a:b"], expires=dt.date(2031, 2, 3)).entry
    assert cli.main(["check", lasting, expiring]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ci: tenant=acme scopes=a:b,b:c expires=never limit=RATELIMIT_DEFAULT nets=any",
        "old: tenant=default scopes=a:b expires=2031-02-03 limit=RATELIMIT_DEFAULT nets=any",
    ]


def test_cli_check_reads_entries_from_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = [mint(KEY_PREFIX, key_id=name, scopes=["a:b"]).entry for name in ("a", "b")]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(entries)))
    assert cli.main(["check", "--json"]) == 0
    assert [key["id"] for key in json.loads(capsys.readouterr().out)] == ["a", "b"]


def test_cli_new_keeps_the_tenant(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["new", "--id", "ci", "--scope", "a:b", "--tenant", "globex"]) == 0
    out = capsys.readouterr().out
    entry = next(line.strip() for line in out.splitlines() if line.strip().startswith("id="))
    assert parse_entry(entry).tenant == "globex"


def test_cli_without_a_command_shows_how_to_call_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main([])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: python -m {keys.__name__} ")
    assert "required: command" in err


@pytest.mark.parametrize(
    "name",
    [
        f"{KEY_PREFIX}_integrations",
        f"{KEY_PREFIX}_corporation1",
        f"{KEY_PREFIX}_Corporation2024_EMEA",
        f"{KEY_PREFIX}_" + "x" * (63 - len(KEY_PREFIX)),  # 64 characters
        "0123456789abcdefABCDEF0123456789abcdefABCDEF0123456789abcdef",
    ],
    ids=["words", "word-and-digit", "mixed-case", "long", "64-hex-and-letters"],
)
@pytest.mark.parametrize("field", ["key_id", "tenant"])
def test_an_ordinary_name_after_the_key_prefix_is_accepted(name: str, field: str) -> None:
    minted = mint(KEY_PREFIX, scopes=["a:b"], **{"key_id": "ci", "tenant": "acme", field: name})
    assert getattr(parse_entry(minted.entry), field) == name


def test_a_key_with_a_wrong_checksum_is_a_name_not_a_key() -> None:
    """Only a whole key is refused: the checksum is what tells one from a lookalike."""
    secret = mint(KEY_PREFIX, key_id="k", scopes=["a:b"]).secret
    assert keys.holds_a_key(secret, KEY_PREFIX)
    assert not keys.holds_a_key(flip(secret, len(secret) - 1), KEY_PREFIX)
    assert not keys.holds_a_key(secret[:-1], KEY_PREFIX)
    assert not keys.holds_a_key(secret, f"{KEY_PREFIX}x")  # a key of another service is a name here


@pytest.mark.parametrize(
    "place",
    ["whole", "glued-before", "glued-after", "inside-a-name", "body-without-prefix"],
)
@pytest.mark.parametrize(("field", "argument"), [("id", "key_id"), ("tenant", "tenant")])
def test_a_key_anywhere_in_an_id_or_tenant_is_refused_and_never_echoed(
    place: str, field: str, argument: str
) -> None:
    secret = mint(KEY_PREFIX, key_id="k", scopes=["a:b"]).secret
    body = secret[len(KEY_PREFIX) + 1 :]
    name = {
        "whole": secret,
        "glued-before": f"x{secret}",
        "glued-after": f"{secret}x",
        "inside-a-name": f"c-{secret}-p",  # 64 characters with the longest prefix, 10
        "body-without-prefix": body,
    }[place]
    with pytest.raises(EntryError, match=f"{field} holds an API key") as error:
        mint(KEY_PREFIX, scopes=["a:b"], **{"key_id": "ci", "tenant": "acme", argument: name})
    assert body[:12] not in str(error.value)


def test_a_comment_ends_an_entry_at_its_first_hash() -> None:
    minted = mint(KEY_PREFIX, key_id="a", scopes=["a:b"])
    assert [key.key_id for key in ring_of_text(f"{minted.entry}  # rotated # twice")] == ["a"]


# --- the whole digest ------------------------------------------------------------------------


def with_digest_byte_changed(minted: keys.MintedKey, index: int) -> KeyRing:
    """A ring whose one entry has the digest of ``minted`` but for one byte."""
    changed = bytearray(minted.key.digest)
    changed[index] ^= 0x01
    return KeyRing(KEY_PREFIX, [dataclasses.replace(minted.key, digest=bytes(changed))])


def test_an_entry_whose_digest_differs_only_in_its_last_byte_is_refused() -> None:
    """Entries are not secrets: a lookup on part of the digest (its first 8 hex digits, say)
    would let whoever reads an entry find a key for it offline in about 2**32 hashes."""
    minted = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"])
    assert ring_of(minted).verify(minted.secret).key_id == "ci"
    with pytest.raises(UnknownKey):
        with_digest_byte_changed(minted, -1).verify(minted.secret)


def test_an_entry_whose_digest_differs_only_in_its_first_byte_is_refused() -> None:
    minted = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"])
    with pytest.raises(UnknownKey):
        with_digest_byte_changed(minted, 0).verify(minted.secret)


# --- a maximum lifetime --------------------------------------------------------------------------

NOON = dt.datetime(2030, 1, 1, 12, 0, 30, 500, tzinfo=UTC)


def test_a_key_is_accepted_after_an_instant_only_if_it_expires_later() -> None:
    key = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"]).key
    at = dataclasses.replace(key, expires=NOON)
    assert key.accepted_after(NOON + dt.timedelta(days=36500))
    assert at.accepted_after(NOON - dt.timedelta(microseconds=1))
    assert not at.accepted_after(NOON)
    assert not dataclasses.replace(key, expires=dt.date(2030, 1, 2)).accepted_after(
        dt.datetime(2030, 1, 2, tzinfo=UTC)
    )


def test_without_a_maximum_the_expiry_asked_for_is_kept() -> None:
    assert keys.expiry_within(None, now=NOON, max_days=None) is None
    assert keys.expiry_within(dt.date(2040, 1, 1), now=NOON, max_days=None) == dt.date(2040, 1, 1)


def test_under_a_maximum_a_key_expires_at_the_last_minute_it_allows() -> None:
    assert keys.expiry_within(None, now=NOON, max_days=90) == dt.datetime(2030, 4, 1, 12, 0, tzinfo=UTC)


def test_under_a_maximum_the_last_minute_is_a_utc_minute_whatever_the_servers_zone(
    server_zone: Callable[[str], None],
) -> None:
    """Rounded down in a zone whose offset has seconds, the expiry would not be a minute an entry
    can hold, and written to the minute it would move."""
    server_zone("LMT+0:44:30")
    expires = keys.expiry_within(None, now=NOON, max_days=90)
    assert expires == dt.datetime(2030, 4, 1, 12, 0, tzinfo=UTC)
    assert keys.format_expiry(expires) == "2030-04-01T12:00Z"


def test_under_a_maximum_an_expiry_up_to_it_is_kept_and_one_past_it_refused() -> None:
    latest = NOON + dt.timedelta(days=90)
    assert keys.expiry_within(latest, now=NOON, max_days=90) == latest
    assert keys.expiry_within(dt.date(2030, 4, 1), now=NOON, max_days=90) == dt.date(2030, 4, 1)
    with pytest.raises(EntryError, match="more than 90 days ahead"):
        keys.expiry_within(latest + dt.timedelta(microseconds=1), now=NOON, max_days=90)
    with pytest.raises(EntryError, match="more than 90 days ahead"):
        keys.expiry_within(dt.date(2030, 4, 2), now=NOON, max_days=90)


@pytest.mark.parametrize("max_days", [None, 90])
def test_an_expiry_that_is_not_in_the_future_is_refused(max_days: int | None) -> None:
    with pytest.raises(EntryError, match="not in the future"):
        keys.expiry_within(NOON, now=NOON, max_days=max_days)
    assert keys.expiry_within(NOON, now=NOON - dt.timedelta(microseconds=1), max_days=max_days) == NOON


def lifetime(days: int | None) -> Callable[[], int | None]:
    return lambda: days


def test_cli_new_expires_a_key_at_the_maximum_lifetime(capsys: pytest.CaptureFixture[str]) -> None:
    before = dt.datetime.now(UTC)
    assert cli.main(["new", "--id", "ci", "--scope", "a:b", "--json"], max_lifetime=lifetime(30)) == 0
    expires = parse_entry(json.loads(capsys.readouterr().out)["entry"]).expires
    assert expires is not None
    assert before + dt.timedelta(days=30, minutes=-1) <= keys.refused_from(expires)
    assert keys.refused_from(expires) <= dt.datetime.now(UTC) + dt.timedelta(days=30)


def test_cli_new_refuses_an_expiry_past_the_maximum_lifetime(capsys: pytest.CaptureFixture[str]) -> None:
    later = (dt.datetime.now(UTC) + dt.timedelta(days=32)).date().isoformat()
    argv = ["new", "--id", "ci", "--scope", "a:b", "--expires", later]
    assert cli.main(argv, max_lifetime=lifetime(30)) == 2
    captured = capsys.readouterr()
    assert (
        captured.err
        == "error: --expires is more than 30 days ahead, the maximum lifetime (KEY_MAX_LIFETIME_DAYS)\n"
    )
    assert captured.out == ""


def test_cli_roll_expires_the_successor_at_the_maximum_lifetime(capsys: pytest.CaptureFixture[str]) -> None:
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"], expires=dt.datetime.now(UTC) + dt.timedelta(days=3))
    assert cli.main(["roll", old.entry, "--overlap", "24", "--json"], max_lifetime=lifetime(7)) == 0
    successor = parse_entry(json.loads(capsys.readouterr().out)["entry"])
    assert successor.expires is not None
    assert (
        dt.timedelta(days=6)
        < keys.refused_from(successor.expires) - dt.datetime.now(UTC)
        <= dt.timedelta(days=7)
    )


def test_cli_roll_refuses_an_overlap_longer_than_the_maximum_lifetime(
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"])
    assert cli.main(["roll", old.entry, "--overlap", "169"], max_lifetime=lifetime(7)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --overlap is longer than the maximum lifetime, 7 days")
    assert captured.out == ""
    assert cli.main(["roll", old.entry, "--overlap", "168"], max_lifetime=lifetime(7)) == 0


def test_cli_says_which_variable_is_malformed(capsys: pytest.CaptureFixture[str]) -> None:
    def malformed() -> int | None:
        raise ConfigError("KEY_MAX_LIFETIME_DAYS", "must be a whole number")

    assert cli.main(["new", "--id", "ci", "--scope", "a:b"], max_lifetime=malformed) == 2
    assert capsys.readouterr().err == "error: KEY_MAX_LIFETIME_DAYS: must be a whole number\n"


# --- the command line never echoes a key ---------------------------------------------------------


def test_argparse_still_documents_error_as_taking_the_message() -> None:
    """The command line masks argparse's messages by overriding ArgumentParser.error(message),
    which argparse documents; a release that changed its signature would bypass the mask."""
    assert list(inspect.signature(argparse.ArgumentParser.error).parameters) == ["self", "message"]


@pytest.fixture
def pasted() -> str:
    return mint(KEY_PREFIX, key_id="k", scopes=["a:b"]).secret


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What the command wrote when it refused ``argv``; asserts it wrote no key at all."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert not re.search(keys.key_pattern(KEY_PREFIX, keys.MIN_KEY_PIECE), captured.out + captured.err)
    return captured.err


def test_a_stray_key_argument_is_never_echoed(pasted: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["new", "--id", "x", "--scope", "a:b", pasted], capsys)
    assert "error: unrecognized arguments: [MASKED]" in err


def test_a_key_given_as_an_unknown_option_is_never_echoed(
    pasted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(["new", "--id", "x", "--scope", "a:b", f"--key={pasted}"], capsys)
    assert "error: unrecognized arguments: --key=[MASKED]" in err


def test_a_key_given_as_the_command_is_never_echoed(pasted: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused([pasted], capsys)
    assert "invalid choice: '[MASKED]'" in err


def test_a_key_body_without_its_prefix_is_never_echoed(
    pasted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    body = pasted[len(KEY_PREFIX) + 1 :]
    err = refused(["new", "--id", "x", "--scope", "a:b", body], capsys)
    assert "error: unrecognized arguments: [MASKED]" in err
    assert body[:12] not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["roll", "--overlap", "{key}"],
        ["roll", "--overlap", "1", "--expires", "{key}"],
        ["new", "--id", "x", "--scope", "a:b", "--limit", "{key}"],
        ["new", "--id", "x", "--scope", "a:b", "--net", "{key}"],
        ["new", "--id", "x", "--scope", "a:b", "--expires", "{key}"],
    ],
    ids=["overlap", "roll-expires", "limit", "net", "new-expires"],
)
def test_a_key_given_as_a_typed_value_is_never_echoed(
    pasted: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    err = refused([part.replace("{key}", pasted) for part in argv], capsys)
    assert "error: argument --" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["new", "--id", "{key}", "--scope", "a:b"],
        ["new", "--id", "x", "--scope", "a:b", "--tenant", "{key}"],
        ["new", "--id", "x", "--scope", "{key}"],
        ["roll", "{key}", "--overlap", "1"],
        ["roll", "--file", "{key}", "--id", "x", "--overlap", "1"],
        ["check", "{key}"],
    ],
    ids=["id", "tenant", "scope", "roll-entry", "roll-file", "check"],
)
def test_a_key_given_where_a_name_or_an_entry_goes_is_never_echoed(
    pasted: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert cli.main([part.replace("{key}", pasted) for part in argv]) in (1, 2)
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ")
    assert not re.search(keys.key_pattern(KEY_PREFIX, keys.MIN_KEY_PIECE), captured.out + captured.err)
