"""``keys roll --file``: a keys file rewritten in place, in one rename, with nothing but the rolled
entry changed, never holding the key, and untouched by a roll that fails."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import locale
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.keys import (
    KEY_PREFIX,
    KeyRing,
    MintedKey,
    cli,
    format_expiry,
    key_pattern,
    mint,
    parse_entry,
)
from {{ cookiecutter.package_name }}.keys.roll import FileChanged, KeysFile

UTC = dt.UTC


@pytest.fixture
def ci() -> MintedKey:
    return mint(KEY_PREFIX, key_id="ci", scopes=["items:read"], tenant="acme", limit="10/second")


@pytest.fixture
def other() -> MintedKey:
    return mint(KEY_PREFIX, key_id="other", scopes=["items:write"])


@pytest.fixture
def keys_file(tmp_path: Path, ci: MintedKey, other: MintedKey) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(f"{ci.entry}\n{other.entry}\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def roll_file(path: Path | str, key_id: str, *options: str) -> int:
    return cli.main(["roll", "--file", str(path), "--id", key_id, "--overlap", "24", *options])


def printed(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    out: dict[str, str] = json.loads(capsys.readouterr().out)
    return out


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_a_file_of_two_entries_leaves_three_the_old_one_expiring(
    keys_file: Path, ci: MintedKey, other: MintedKey, capsys: pytest.CaptureFixture[str]
) -> None:
    before = dt.datetime.now(UTC)
    assert roll_file(keys_file, "ci", "--json") == 0
    shown = printed(capsys)
    assert set(shown) == {"key", "entry", "old_entry"}
    lines = keys_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    retired, successor = parse_entry(lines[0]), parse_entry(lines[1])
    assert lines[2] == other.entry
    assert lines[1] == shown["entry"]
    assert (retired.digest, retired.key_id) == (ci.key.digest, "ci")
    assert retired.expires is not None
    assert before + dt.timedelta(hours=24) <= retired.expires <= before + dt.timedelta(hours=24, minutes=2)
    assert (successor.key_id, successor.tenant, successor.scopes, successor.limit) == (
        "ci~2",
        "acme",
        ci.key.scopes,
        ci.key.limit,
    )
    ring = KeyRing.from_text(KEY_PREFIX, keys_file.read_text(encoding="utf-8"))
    assert ring.verify(shown["key"]).key_id == "ci~2"
    assert ring.verify(ci.secret).key_id == "ci"


def test_the_file_never_holds_the_key_and_it_is_printed_once(
    keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert roll_file(keys_file, "ci") == 0
    out = capsys.readouterr().out
    (secret,) = re.findall(key_pattern(KEY_PREFIX), out)
    assert out.count(secret) == 1
    text = keys_file.read_text(encoding="utf-8")
    assert not re.search(key_pattern(KEY_PREFIX, 12), text)
    assert secret[len(KEY_PREFIX) + 1 :][:12] not in text
    old, successor = text.splitlines()[:2]
    retired = parse_entry(old)
    assert retired.expires is not None
    assert out.splitlines() == [
        "key (shown once, give it to the client):",
        f"  {secret}",
        f"entry (added to {keys_file}):",
        f"  {successor}",
        f"old entry (rewritten in place; its key is refused from {format_expiry(retired.expires)}):",
        f"  {old}",
        f"{keys_file} rewritten: send HUP to the gunicorn master to apply it",
    ]


def test_the_successor_gets_the_expiry_asked_for(keys_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expires = (dt.datetime.now(UTC) + dt.timedelta(days=30)).date()
    assert roll_file(keys_file, "ci", "--expires", expires.isoformat(), "--json") == 0
    assert parse_entry(printed(capsys)["entry"]).expires == expires
    assert parse_entry(keys_file.read_text(encoding="utf-8").splitlines()[1]).expires == expires


def test_the_new_text_is_written_beside_the_file_under_a_hidden_name(keys_file: Path) -> None:
    """Beside it, so the rename is one step on one file system; hidden, so nothing that reads every
    file of the directory (a secrets loader, a glob in a unit file) reads half of it."""
    staged = KeysFile.read(keys_file).stage("new text\n")
    assert staged.temporary.parent == keys_file.parent
    assert staged.temporary.name.startswith(f".{keys_file.name}.")
    assert staged.temporary.read_bytes() == b"new text\n"
    staged.discard()
    assert siblings(keys_file) == ["api-keys"]


def test_the_file_is_read_and_written_as_utf8_whatever_the_hosts_locale(
    tmp_path: Path, ci: MintedKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "api-keys"
    path.write_bytes(f"# rotated by Zo\u00eb\n{ci.entry}\n".encode())
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # a host whose locale reads ASCII only
    try:
        assert roll_file(path, "ci") == 0, capsys.readouterr().err
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert path.read_bytes().startswith("# rotated by Zo\u00eb\n".encode())


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_the_files_mode_stays(keys_file: Path, capsys: pytest.CaptureFixture[str], mode: int) -> None:
    keys_file.chmod(mode)
    assert roll_file(keys_file, "ci") == 0
    assert stat.S_IMODE(keys_file.stat().st_mode) == mode
    assert siblings(keys_file) == ["api-keys"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_the_files_owner_stays(keys_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The service may read the file as its own user: a file that root rewrote as root's own
    would be unreadable to it at the next reload."""
    os.chown(keys_file, 65534, 65534)
    assert roll_file(keys_file, "ci") == 0
    assert (keys_file.stat().st_uid, keys_file.stat().st_gid) == (65534, 65534)


def test_comments_blank_lines_line_endings_and_other_entries_stay_as_written(
    tmp_path: Path, ci: MintedKey, other: MintedKey, capsys: pytest.CaptureFixture[str]
) -> None:
    third = mint(KEY_PREFIX, key_id="third", scopes=["a:b"])
    original = (
        f"# production keys\r\n\r\n  {other.entry} ,  {ci.entry}   # rolled monthly # by ops\r\n{third.entry}"
    )
    path = tmp_path / "api-keys"
    path.write_bytes(original.encode())
    assert roll_file(path, "ci", "--json") == 0
    shown = printed(capsys)
    assert path.read_bytes().decode() == (
        "# production keys\r\n"
        "\r\n"
        f"  {other.entry} ,  {shown['old_entry']}   # rolled monthly # by ops\r\n"
        f"  {shown['entry']}\r\n"
        f"{third.entry}"
    )


def test_an_entry_on_the_last_line_without_a_line_break_gets_its_successor_below(
    tmp_path: Path, ci: MintedKey, other: MintedKey, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "api-keys"
    path.write_text(f"{other.entry}\n{ci.entry}", encoding="utf-8")
    assert roll_file(path, "ci", "--json") == 0
    shown = printed(capsys)
    assert path.read_bytes().decode() == f"{other.entry}\n{shown['old_entry']}\n{shown['entry']}"


def test_an_old_entry_that_expires_sooner_is_left_as_written(
    tmp_path: Path, other: MintedKey, capsys: pytest.CaptureFixture[str]
) -> None:
    soon = (dt.datetime.now(UTC) + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%MZ")
    lapsing = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"]).entry.replace(
        ";sha256", f";expires={soon};sha256"
    )
    written = lapsing.replace(
        ";", " ; "
    )  # spaces an operator typed: a field-by-field rewrite would drop them
    path = tmp_path / "api-keys"
    path.write_text(f"{written}\n{other.entry}\n", encoding="utf-8")
    assert roll_file(path, "ci", "--json") == 0
    assert path.read_text(encoding="utf-8").splitlines()[0] == written


def test_a_symbolic_link_stays_a_link_and_its_target_is_rewritten(
    keys_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "link"
    link.symlink_to(keys_file)
    assert roll_file(link, "ci") == 0
    assert link.is_symlink()
    assert len(keys_file.read_text(encoding="utf-8").splitlines()) == 3


def test_rolling_the_successor_gives_the_next_generation(
    keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert roll_file(keys_file, "ci") == 0
    capsys.readouterr()
    assert roll_file(keys_file, "ci~2", "--json") == 0
    assert parse_entry(printed(capsys)["entry"]).key_id == "ci~3"
    ids = [parse_entry(line).key_id for line in keys_file.read_text(encoding="utf-8").splitlines()]
    assert ids == ["ci", "ci~2", "ci~3", "other"]


def raw_key_in_a_comment(ci: MintedKey, other: MintedKey) -> str:
    return f"{ci.entry}  # was {other.secret}\n{other.entry}\n"


@pytest.mark.parametrize(
    ("text", "key_id", "problem"),
    [
        (lambda ci, other: f"{ci.entry}\n{other.entry}\n", "nobody", "has no entry with that id"),
        (
            lambda ci, other: f"{ci.entry}\n{other.entry.replace('id=other', 'id=ci')}\n",
            "ci",
            "entry 2 has the same id as entry 1",
        ),
        (lambda ci, other: f"{ci.entry}\n{other.secret}\n", "ci", "line 2 holds a raw key"),
        (raw_key_in_a_comment, "ci", "line 1 holds a raw key"),
        (lambda ci, other: f"{ci.entry}\nid=x;scopes=a:b\n", "ci", "entry 2 has no sha256 field"),
        (
            lambda ci, other: f"{ci.entry}\n{other.entry.replace('id=other', 'id=ci~2')}\n",
            "ci",
            "already has ci~2, a later generation",
        ),
    ],
    ids=["id-absent", "id-twice", "raw-key", "raw-key-in-a-comment", "broken-entry", "successor-exists"],
)
def test_a_refused_roll_says_why_in_one_line_and_leaves_the_file_untouched(
    tmp_path: Path,
    ci: MintedKey,
    other: MintedKey,
    capsys: pytest.CaptureFixture[str],
    text: object,
    key_id: str,
    problem: str,
) -> None:
    path = tmp_path / "api-keys"
    assert callable(text)
    path.write_text(text(ci, other), encoding="utf-8")
    path.chmod(0o600)
    before = (path.read_bytes(), path.stat())
    assert roll_file(path, key_id) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [captured.err.strip()]
    assert captured.err.startswith(f"error: {path}: {problem}")
    assert captured.err.rstrip().endswith("nothing changed")
    assert other.secret[len(KEY_PREFIX) + 1 :][:12] not in captured.err
    assert (path.read_bytes(), path.stat()) == before
    assert siblings(path) == ["api-keys"]


def test_a_missing_file_is_named_without_its_contents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert roll_file(tmp_path / "absent", "ci") == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'absent'}: cannot read it (FileNotFoundError)\n"


@pytest.mark.parametrize("given", [["--file", "{path}"], ["--id", "ci"]], ids=["file-alone", "id-alone"])
def test_file_and_id_go_together(
    keys_file: Path, capsys: pytest.CaptureFixture[str], given: list[str]
) -> None:
    argv = ["roll", "--overlap", "1", *(part.replace("{path}", str(keys_file)) for part in given)]
    assert cli.main(argv, max_lifetime=lambda: None) == 2
    assert capsys.readouterr().err.startswith("error: --file and --id go together")


class LostOutput(io.StringIO):
    """Standard output whose reader went away: the pipe breaks when it is flushed."""

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_when_the_key_cannot_be_shown_the_file_is_untouched(
    keys_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key is shown before the file changes: a successor nobody holds would leave the old
    key to die on schedule with no client able to move."""
    before = keys_file.read_bytes()
    monkeypatch.setattr("sys.stdout", LostOutput())
    assert roll_file(keys_file, "ci") == 2
    assert keys_file.read_bytes() == before
    assert siblings(keys_file) == ["api-keys"]
    assert (
        capsys.readouterr().err
        == f"error: {keys_file}: not rewritten (Broken pipe); the key printed is void\n"
    )


class EditWhileShown(io.StringIO):
    """Standard output, watched by an operator who edits the keys file while the key is shown."""

    def __init__(self, path: Path, edit: str) -> None:
        super().__init__()
        self.path, self.edit = path, edit

    def write(self, text: str) -> int:
        if self.edit:
            self.path.write_text(self.edit, encoding="utf-8")
            self.edit = ""
        return super().write(text)


def test_an_edit_made_while_the_key_is_shown_is_kept_and_the_key_is_void(
    keys_file: Path, other: MintedKey, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs = f"{other.entry}\n"
    monkeypatch.setattr("sys.stdout", EditWhileShown(keys_file, theirs))
    assert roll_file(keys_file, "ci") == 2
    assert capsys.readouterr().err == (
        f"error: {keys_file}: not rewritten (it changed while the roll was prepared: roll again); "
        "the key printed is void\n"
    )
    assert keys_file.read_text(encoding="utf-8") == theirs
    assert siblings(keys_file) == ["api-keys"]


@pytest.fixture
def shared_directory() -> Iterator[Path]:
    """A directory another user may enter (pytest's own are private to their owner)."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        directory.chmod(0o755)
        yield directory


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """This process as an unprivileged user, as an operator without root runs the command."""
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
@pytest.mark.parametrize(
    ("directory_mode", "problem"),
    [(0o755, "Permission denied"), (0o777, "Operation not permitted")],
    ids=["directory-not-writable", "owner-cannot-be-kept"],
)
def test_a_roll_that_cannot_write_the_file_as_it_was_leaves_it_untouched(
    shared_directory: Path,
    ci: MintedKey,
    capsys: pytest.CaptureFixture[str],
    directory_mode: int,
    problem: str,
) -> None:
    """Someone else's keys file, readable: no copy beside it can be made (a directory they may not
    write), or none with its owner (the service's user would no longer read it)."""
    path = shared_directory / "api-keys"
    path.write_text(f"{ci.entry}\n", encoding="utf-8")
    path.chmod(0o644)
    shared_directory.chmod(directory_mode)
    with as_nobody():
        code = roll_file(path, "ci")
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: {path}: cannot write beside it with its mode and owner ({problem}); nothing changed\n"
    )
    assert path.read_text(encoding="utf-8") == f"{ci.entry}\n"
    assert siblings(path) == ["api-keys"]


def test_an_edit_made_while_the_roll_was_prepared_is_kept(keys_file: Path, ci: MintedKey) -> None:
    read = KeysFile.read(keys_file)
    staged = read.stage(read.text + f"{mint(KEY_PREFIX, key_id='mine', scopes=['a:b']).entry}\n")
    theirs = f"{ci.entry}\n"
    keys_file.write_text(theirs, encoding="utf-8")
    with pytest.raises(FileChanged):
        staged.commit()
    assert keys_file.read_text(encoding="utf-8") == theirs
    assert siblings(keys_file) == ["api-keys"]
