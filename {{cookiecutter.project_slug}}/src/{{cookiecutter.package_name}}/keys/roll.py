"""Rolling a key, so a successor takes over with no gap and the old key dies on schedule, and a
keys file is rewritten in one rename: a reload never reads half a file, and a roll that fails
leaves the file as it was.

A successor keeps the tenant, scopes, limit and networks, under the next generation of the id
(``ci-deploy`` -> ``ci-deploy~2`` -> ``ci-deploy~3``); the old entry gets an expiry a few hours
away, so both keys work while clients move.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .entries import ID_PATTERN, LAST_GENERATION, ApiKey, EntryError, MintedKey, mint, parse_entry
from .format import holds_a_key
from .ring import KeyRing

MAX_OVERLAP_HOURS = 8760


class FileChanged(OSError):
    """The keys file changed between its reading and its replacement: that edit would be lost."""


def successor_id(key_id: str) -> str:
    """The stem of ``key_id`` and the next generation: ``ci`` -> ``ci~2``, ``ci~2`` -> ``ci~3``."""
    match = ID_PATTERN.fullmatch(key_id)
    if match is None:
        raise EntryError("id cannot be rolled: it is not an id")
    generation = int(match["generation"] or 1) + 1
    if generation > LAST_GENERATION:
        raise EntryError(f"id has had its last generation ({LAST_GENERATION}): mint a key under a new id")
    return f"{match['stem']}~{generation}"


def roll(
    prefix: str, old: ApiKey, *, overlap: dt.timedelta, now: dt.datetime, expires: dt.date | None = None
) -> tuple[MintedKey, ApiKey]:
    """A successor of ``old`` (same tenant, scopes, limit and networks; the next generation of
    its id), and ``old`` refused from ``overlap`` after ``now``, rounded up to the minute.

    A roll never extends a key's life: an old entry that expires sooner keeps its expiry.
    """
    successor = mint(
        prefix,
        key_id=successor_id(old.key_id),
        scopes=old.scopes,
        tenant=old.tenant,
        expires=expires,
        limit=old.limit,
        nets=old.nets,
    )
    later = (now + overlap).astimezone(dt.UTC)
    retire = later.replace(second=0, microsecond=0)
    if retire < later:
        retire += dt.timedelta(minutes=1)
    if old.accepted_after(retire):
        old = dataclasses.replace(old, expires=retire)
    return successor, old


def roll_in_text(
    text: str,
    key_id: str,
    *,
    prefix: str,
    overlap: dt.timedelta,
    now: dt.datetime,
    expires: dt.date | None = None,
) -> tuple[MintedKey, ApiKey, str]:
    """Roll the entry ``key_id`` of a keys file's text: the successor, the old entry as it now
    reads, and the new text. The old entry is rewritten where it stands and the successor's goes
    on the next line; other entries, comments, blank lines and line endings stay as they were.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        if holds_a_key(line, prefix):
            raise EntryError(f"line {number} holds a raw key: replace it with its entry first")
    ring = KeyRing.from_text(prefix, text)  # every entry valid, no id twice
    lines = text.splitlines(keepends=True)
    found = _find(lines, key_id)
    if found is None:
        raise EntryError("has no entry with that id")
    row, column = found
    old = parse_entry(_parts(lines[row])[column])
    successor, retired = roll(prefix, old, overlap=overlap, now=now, expires=expires)
    if any(key.key_id == successor.key.key_id for key in ring):
        raise EntryError(f"already has {successor.key.key_id}, a later generation: roll that one")
    lines[row : row + 1] = _with_successor(lines[row], column, retired if retired != old else None, successor)
    return successor, retired, "".join(lines)


def _parts(line: str) -> list[str]:
    """The comma-separated entries of a line, before any comment, as written (spaces included)."""
    return line.splitlines()[0].partition("#")[0].split(",")


def _find(lines: list[str], key_id: str) -> tuple[int, int] | None:
    for row, line in enumerate(lines):
        for column, part in enumerate(_parts(line)):
            if part.strip() and parse_entry(part).key_id == key_id:
                return row, column
    return None


def _with_successor(line: str, column: int, retired: ApiKey | None, successor: MintedKey) -> list[str]:
    """The line with the old entry rewritten (unless its expiry stays), and the successor's line."""
    content = line.splitlines()[0]
    ending = line[len(content) :]
    entries, hash_sign, comment = content.partition("#")
    parts = entries.split(",")
    if retired is not None:
        part = parts[column]
        lead, trail = part[: len(part) - len(part.lstrip())], part[len(part.rstrip()) :]
        parts[column] = f"{lead}{retired.entry()}{trail}"
    newline = "\r\n" if ending == "\r\n" else "\n"
    indent = content[: len(content) - len(content.lstrip())]
    # A last line without a line break keeps none: the successor's line is the last one then.
    return [
        ",".join(parts) + hash_sign + comment + (ending or newline),
        indent + successor.entry + (ending and newline),
    ]


def _identity(status: os.stat_result) -> tuple[int, int, int, int]:
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


@dataclass(frozen=True)
class KeysFile:
    """A keys file as read: its text, and its status, to keep its mode and owner and to notice
    another edit before replacing it."""

    path: Path  # symbolic links resolved: a link stays a link, and its target is rewritten
    text: str
    status: os.stat_result

    @classmethod
    def read(cls, path: Path) -> KeysFile:
        target = Path(os.path.realpath(path))
        # Bytes, decoded as UTF-8 whatever the locale: each line keeps its own line ending.
        with target.open("rb") as file:
            return cls(target, file.read().decode(), os.fstat(file.fileno()))

    def stage(self, text: str) -> Staged:
        """Write ``text`` beside the file, with its mode and owner, flushed to the disk. Its name
        is hidden (a dot first), so nothing that reads every file of the directory reads it."""
        descriptor, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        temporary = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as file:
                # The service may read the file as its own user: a file that root rewrote as
                # root's own would be unreadable to it at the next reload.
                created = os.fstat(file.fileno())
                if (created.st_uid, created.st_gid) != (self.status.st_uid, self.status.st_gid):
                    os.fchown(file.fileno(), self.status.st_uid, self.status.st_gid)
                # After the owner: a change of owner clears the set-id bits a mode may have.
                os.fchmod(file.fileno(), stat.S_IMODE(self.status.st_mode))
                file.write(text.encode())
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            temporary.unlink()
            raise
        return Staged(self, temporary)


@dataclass(frozen=True)
class Staged:
    """A keys file's new text, on disk beside it under a hidden name, not yet in its place."""

    original: KeysFile
    temporary: Path

    def commit(self) -> None:
        """Put the new text in place with one rename, unless the file changed since it was read;
        on failure, nothing is left beside it."""
        target = self.original.path
        try:
            if _identity(os.stat(target)) != _identity(self.original.status):
                raise FileChanged("it changed while the roll was prepared: roll again")
            os.replace(self.temporary, target)
        except BaseException:
            self.discard()
            raise
        # The rename itself reaches the disk only with its directory.
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def discard(self) -> None:
        self.temporary.unlink()
