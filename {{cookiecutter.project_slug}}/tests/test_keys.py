"""Keys: format, entries, verification and the operator CLI."""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import operator
import re
import secrets
import sys
import time
from collections.abc import Iterator

import pytest

from {{ cookiecutter.package_name }} import keys
from {{ cookiecutter.package_name }}.keys import (
    KEY_PREFIX,
    EntryError,
    ExpiredKey,
    KeyRing,
    MalformedKey,
    UnknownKey,
    mint,
    parse_entry,
)


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
    assert ring.verify(minted.secret, today=dt.date(2029, 12, 31)).key_id == "a"
    with pytest.raises(ExpiredKey):
        ring.verify(minted.secret, today=dt.date(2030, 1, 1))


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
    code = keys.main(["new", "--id", "ci", "--scope", "a:b", "--expires", expires, "--json"])
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
    with pytest.raises(EntryError, match=f"{field} looks like an API key") as error:
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
    code = keys.main(
        ["new", "--id", "ci", "--scope", "items:read", "--scope", "items:write", "--tenant", "acme"]
    )
    out = capsys.readouterr().out
    secret = re.search(keys.key_pattern(KEY_PREFIX), out)
    assert code == 0
    assert secret is not None
    assert out.count(secret.group(0)) == 1
    entry = next(line.strip() for line in out.splitlines() if line.strip().startswith("id="))
    assert ring_of_text(entry).verify(secret.group(0)).scopes == {"items:read", "items:write"}


def ring_of_text(text: str) -> KeyRing:
    return KeyRing.from_text(KEY_PREFIX, text)


def test_cli_new_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert keys.main(["new", "--id", "ci", "--scope", "a:b", "--expires", "2031-02-03", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["id"] == "ci"
    assert printed["expires"] == "2031-02-03"
    assert printed["tenant"] == "default"
    assert ring_of_text(printed["entry"]).verify(printed["key"], today=dt.date(2031, 1, 1)).key_id == "ci"


@pytest.mark.parametrize("when", ["2020-01-01", dt.datetime.now(dt.UTC).date().isoformat()])
def test_cli_new_refuses_an_expiry_that_is_not_in_the_future(
    capsys: pytest.CaptureFixture[str], when: str
) -> None:
    assert keys.main(["new", "--id", "ci", "--scope", "a:b", "--expires", when]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --expires is not in the future")
    assert not re.search(keys.key_pattern(KEY_PREFIX), captured.out)


def test_cli_new_refuses_a_bad_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert keys.main(["new", "--id", "no spaces", "--scope", "a:b"]) == 2
    assert "id must be" in capsys.readouterr().err


def test_cli_check_describes_entries_without_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    minted = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"], tenant="acme")
    assert keys.main(["check", "--json", minted.entry]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"id": "ci", "tenant": "acme", "scopes": ["a:b"], "expires": None}
    ]


def test_cli_check_rejects_a_raw_key_without_echoing_it(capsys: pytest.CaptureFixture[str]) -> None:
    raw = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"]).secret
    assert keys.main(["check", raw]) == 1
    captured = capsys.readouterr()
    assert "raw key" in captured.err
    assert raw not in captured.err + captured.out


def test_digest_is_sha256_of_the_key() -> None:
    import hashlib

    secret = f"{KEY_PREFIX}_{secrets.token_hex(8)}"
    assert keys.digest(secret) == hashlib.sha256(secret.encode()).digest()


def test_cli_check_lists_each_entry_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    lasting = mint(KEY_PREFIX, key_id="ci", scopes=["b:c", "a:b"], tenant="acme").entry
    expiring = mint(KEY_PREFIX, key_id="old", scopes=["a:b"], expires=dt.date(2031, 2, 3)).entry
    assert keys.main(["check", lasting, expiring]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ci: tenant=acme scopes=a:b,b:c expires=never",
        "old: tenant=default scopes=a:b expires=2031-02-03",
    ]


def test_cli_check_reads_entries_from_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = [mint(KEY_PREFIX, key_id=name, scopes=["a:b"]).entry for name in ("a", "b")]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(entries)))
    assert keys.main(["check", "--json"]) == 0
    assert [key["id"] for key in json.loads(capsys.readouterr().out)] == ["a", "b"]


def test_cli_new_keeps_the_tenant(capsys: pytest.CaptureFixture[str]) -> None:
    assert keys.main(["new", "--id", "ci", "--scope", "a:b", "--tenant", "globex"]) == 0
    out = capsys.readouterr().out
    entry = next(line.strip() for line in out.splitlines() if line.strip().startswith("id="))
    assert parse_entry(entry).tenant == "globex"


def test_cli_without_a_command_shows_how_to_call_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        keys.main([])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: python -m {keys.__package__}.keys")
    assert "required: command" in err


def test_a_piece_of_a_key_pasted_as_an_id_is_refused() -> None:
    secret = mint(KEY_PREFIX, key_id="k", scopes=["a:b"]).secret
    piece = secret[: len(KEY_PREFIX) + 1 + 20]
    with pytest.raises(EntryError, match="id looks like an API key"):
        mint(KEY_PREFIX, key_id=piece, scopes=["a:b"])


def test_a_comment_ends_an_entry_at_its_first_hash() -> None:
    minted = mint(KEY_PREFIX, key_id="a", scopes=["a:b"])
    assert [key.key_id for key in ring_of_text(f"{minted.entry}  # rotated # twice")] == ["a"]
