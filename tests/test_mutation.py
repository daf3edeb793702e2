"""Mutation testing of a bake: mutmut's pass over every module in `make mutate`'s scope (sampled
to fit CI) leaves no unexplained survivor, and the hand-made mutants that mutmut cannot make
(module constants, code outside that scope) fail the bake's own tests. The score and every survivor go to
reports/mutation.txt, and the end of `make test` prints them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TEMPLATE

REPORT = TEMPLATE / "reports" / "mutation.txt"
PACKAGE = "acme_widgets_api"
# Tenths of mutmut's mutants that CI tries (`make mutate` in a bake tries them all): the mutants
# whose number ends in 0, spread over every function in the scope. Two tenths took 555 s for 500
# mutants on 2 loaded cores (2026-12-07); the scope has since taken in app.py, whose every mutant
# runs nearly the whole fast suite (each test builds an app), and openapi.py: one tenth keeps
# this test within the 12 minutes the template suite allows it.
SAMPLE = 1


def copy_of(project: Path, tmp_path: Path) -> Path:
    copy = tmp_path / project.name
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("__pycache__", ".*_cache", "mutants"))
    return copy


def test_the_security_core_has_no_unexplained_surviving_mutant(default_bake: Path, tmp_path: Path) -> None:
    project = copy_of(default_bake, tmp_path)
    result = subprocess.run(
        [sys.executable, "scripts/mutate.py", "--sample", str(SAMPLE)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    output = result.stdout + result.stderr
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(output, encoding="utf-8")
    assert result.returncode == 0, f"scripts/mutate.py (reports/mutation.txt):\n{output[-8000:]}"
    assert f"mutation score (a sample: {SAMPLE}0% of the mutants): " in output


LAST_SUITE = '        "ECDHE-RSA-CHACHA20-POLY1305",\n'
# (file, [(text, replacement)], the test that must fail). Each is one of the survivors that a
# mutation pass found before these tests existed, or a behaviour only the slow suite checked.
HAND_MADE = {
    "keys-from-8-random-bytes": (
        f"src/{PACKAGE}/keys/format.py",
        [("secrets.token_bytes(RANDOM_BYTES)", "secrets.token_bytes(8)")],
        "tests/test_keys.py::test_a_minted_keys_random_part_spreads_over_all_256_bits",
    ),
    # Entries are not secrets: a lookup on the first 32 bits of the digest would let whoever reads
    # one find a working key offline in about 2**32 hashes. mutmut cannot make this edit.
    "key-lookup-on-32-bits": (
        f"src/{PACKAGE}/keys/ring.py",
        [
            (
                "self._by_digest.get(digest(presented))",
                "next((k for d, k in self._by_digest.items()"
                " if d.hex()[:8] == digest(presented).hex()[:8]), None)",
            )
        ],
        "tests/test_keys.py::test_an_entry_whose_digest_differs_only_in_its_last_byte_is_refused",
    ),
    "cbc-suite-in-tls-1.2": (
        "gunicorn.conf.py",
        [(LAST_SUITE, LAST_SUITE + '        "ECDHE-RSA-AES256-SHA",  # forward secret, but CBC\n')],
        "tests/test_transport.py::test_tls_1_2_negotiates_no_suite_without_forward_secrecy_and_aead",
    ),
    "item-ids-from-pid-and-counter": (
        f"src/{PACKAGE}/stores/items.py",
        [
            ("import uuid\n", "import itertools\nimport os\nimport uuid\n\nCOUNTER = itertools.count()\n"),
            ("uuid.uuid4().hex", 'f"{os.getpid():016x}{next(COUNTER):016x}"'),
        ],
        "tests/test_items.py::test_item_ids_are_unpredictable",
    ),
    "query-string-in-the-request-line": (
        f"src/{PACKAGE}/requestlog.py",
        [("request.method, request.path, response", "request.method, request.full_path, response")],
        "tests/test_errors.py::test_the_query_string_never_reaches_the_request_log_line",
    ),
    "request-id-echoed": (
        f"src/{PACKAGE}/gate.py",
        [
            (
                'headers["X-Request-ID"] = g.request_id',
                'headers["X-Request-ID"] = request.headers.get("X-Request-ID", g.request_id)',
            )
        ],
        "tests/test_errors.py::test_a_key_sent_as_request_id_is_neither_echoed_nor_logged",
    ),
    # A 500 whose detail quotes the exception ("no such table: items") tells a client the schema.
    "500-detail-quotes-the-exception": (
        f"src/{PACKAGE}/errors.py",
        [
            (
                "return problem(error.code or 500, headers=headers)",
                'return problem(error.code or 500, str(getattr(error, "original_exception", "")) or None,'
                " headers=headers)",
            )
        ],
        "tests/test_transport.py::test_security_headers_and_problem_json_on_500_without_internals",
    ),
    # mutmut leaves decorated functions alone, and every view is one: these break views.
    "get-by-id-in-a-tenant-the-client-names": (
        f"src/{PACKAGE}/api/items.py",
        [
            (
                "from flask import Blueprint, current_app\n",
                "from flask import Blueprint, current_app, request\n",
            ),
            (
                "_store().get(current_caller().tenant, item_id)",
                '_store().get(request.args.get("tenant", current_caller().tenant), item_id)',
            ),
        ],
        "tests/test_items.py::test_a_tenant_named_in_the_query_is_ignored",
    ),
    "items-written-with-the-read-scope": (
        f"src/{PACKAGE}/api/items.py",
        [('write="items:write"', 'write="items:read"')],
        "tests/test_items.py::test_a_read_only_key_cannot_create_items",
    ),
    "client-request-id-prefix-only": (
        f"src/{PACKAGE}/requestlog.py",
        [("CLIENT_REQUEST_ID.fullmatch(incoming)", "CLIENT_REQUEST_ID.match(incoming)")],
        "tests/test_errors.py::test_a_key_sent_as_request_id_is_neither_echoed_nor_logged",
    ),
}


@pytest.mark.parametrize("mutant", list(HAND_MADE))
def test_a_hand_made_mutant_fails_the_bakes_own_test(default_bake: Path, tmp_path: Path, mutant: str) -> None:
    path, edits, test = HAND_MADE[mutant]
    project = copy_of(default_bake, tmp_path)
    source = project / path
    text = source.read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, f"{path} changed: update the mutant {mutant}"
        text = text.replace(old, new)
    # Unmutated, the same test passes: test_bake.py runs the default bake's whole suite.
    source.write_text(text, encoding="utf-8")
    mutated = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert mutated.returncode == 1, f"{mutant} survived {test}:\n{mutated.stdout[-3000:]}"
    assert f"FAILED {test}" in mutated.stdout
