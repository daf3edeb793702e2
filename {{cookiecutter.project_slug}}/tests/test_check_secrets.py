"""The pre-commit secret scanner (scripts/check_secrets.py) finds a key of this service wherever
it is glued (to a letter, a digit, "_" or more text after it), and the checksum alone decides:
text shaped like a key with a wrong checksum, and names that merely start like one, pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX

from .support import KeySet, script

check_secrets = script("check_secrets")
FOUND = [(1, f"{KEY_PREFIX}_ API key")]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", ""),
        ("X_", ""),
        ("&k", ""),
        ("k", ""),
        ("7", ""),
        ("_", "_"),
        (f"{KEY_PREFIX}_", ""),
        ("", "tail"),
        ("", "_tail"),
        ("api_key=", "&page=2"),
        ("Bearer", "\\n"),
        ("%5F", "%26"),
    ],
    ids=[
        "alone",
        "after-underscore",
        "after-letter-in-a-query",
        "after-a-letter",
        "after-a-digit",
        "between-underscores",
        "after-the-prefix-twice",
        "before-letters",
        "before-an-underscore",
        "in-a-query",
        "glued-to-a-scheme",
        "between-percent-escapes",
    ],
)
def test_a_key_is_found_wherever_it_is_glued(keys: KeySet, before: str, after: str) -> None:
    assert list(check_secrets.findings(f"token: {before}{keys.unconfigured.secret}{after}")) == FOUND


def test_a_key_with_a_wrong_checksum_glued_to_text_is_not_a_finding(keys: KeySet) -> None:
    secret = keys.unconfigured.secret
    mistyped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert list(check_secrets.findings(f"X_{mistyped}tail &k{mistyped}")) == []


@pytest.mark.parametrize(
    "text",
    [
        f"{KEY_PREFIX}_integrations",
        f"{KEY_PREFIX}_corporation1",
        f"id={KEY_PREFIX}_{'a' * 60}",
        f"{KEY_PREFIX}_" * 20,
        f"{KEY_PREFIX}_{'Ab1' * 17}",
    ],
    ids=["a-tenant-name", "an-id", "a-long-run", "the-prefix-repeated", "key-length-without-checksum"],
)
def test_names_and_lookalikes_are_not_findings(text: str) -> None:
    assert list(check_secrets.findings(text)) == []


def test_every_line_with_a_key_is_named_and_the_key_never_printed(
    keys: KeySet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leak = tmp_path / "notes.md"
    leak.write_text(f"first\nX_{keys.reader.secret}\nclean\n&k{keys.writer.secret}tail\n")
    assert check_secrets.main([str(leak)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[:2] == [f"{leak}:2: {KEY_PREFIX}_ API key", f"{leak}:4: {KEY_PREFIX}_ API key"]
    assert keys.reader.secret not in err
    assert keys.writer.secret not in err
