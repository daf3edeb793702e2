"""Stop a commit that holds a secret: this service's API keys (by prefix and checksum) and a
few credentials of other kinds that are unmistakable.

Usage: python scripts/check_secrets.py FILE...   (pre-commit passes the staged files)

Each finding is printed as ``file:line: kind``, never with the value: the output of a hook
ends up in terminals, CI logs and chat. Exits 1 when anything was found. A line that must
hold such a string (a documented fake) can carry the marker ``pragma: allowlist secret``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, KeyRing, key_pattern

ALLOW_MARKER = "pragma: allowlist secret"
# Every place a key could start, whatever it is glued to (`X_acme_...`, `&kacme_...`, a key
# followed by more letters): a zero-width match at each start, so candidates may overlap. The
# checksum, not the characters around it, decides which candidate is a key.
SERVICE_KEY = re.compile(f"(?=({key_pattern(KEY_PREFIX)}))")
OTHER_SECRETS = {
    "private key": re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[0-9A-Za-z]{36}|github_pat_[0-9A-Za-z_]{82})\b"),
    "Slack token": re.compile(r"\bxox[abposr]-[0-9A-Za-z-]{10,}"),
    "Stripe live key": re.compile(r"\b[rs]k_live_[0-9A-Za-z]{24,}\b"),
}
# Shape and checksum only, no secret: a string with a wrong checksum is an example, not a key.
WELL_FORMED = KeyRing(KEY_PREFIX, [])


def findings(text: str) -> Iterator[tuple[int, str]]:
    """(line number, kind) of every secret in ``text``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if ALLOW_MARKER in line:
            continue
        if any(WELL_FORMED.is_well_formed(match.group(1)) for match in SERVICE_KEY.finditer(line)):
            yield number, f"{KEY_PREFIX}_ API key"
        for kind, pattern in OTHER_SECRETS.items():
            if pattern.search(line):
                yield number, kind


def scan(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as error:
        return [f"{path}: cannot read ({type(error).__name__})"]
    if b"\0" in data[:8192]:
        return []  # binary
    text = data.decode("utf-8", errors="replace")
    return [f"{path}:{number}: {kind}" for number, kind in findings(text)]


def main(argv: Sequence[str]) -> int:
    problems = [problem for name in argv for problem in scan(Path(name))]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(
            f"secret scan: {len(problems)} finding(s), values not shown. Remove them; "
            "a key that was ever pushed must be rotated (docs/operations.md: Rotate a key).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
