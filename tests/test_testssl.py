"""The external scanner testssl.sh against a baked service, as production would serve it.

A default bake runs under real gunicorn (APP_ENV=production, TLS from a certificate written by the
project's own ``scripts/dev_cert.py``) on 127.0.0.1, and ``testssl`` checks its protocols, cipher
categories, forward secrecy, server preferences and defaults, HTTP headers and vulnerabilities.
Any MEDIUM, HIGH or CRITICAL finding fails the test, except the few that only say the certificate
is self-signed (``SELF_SIGNED``). The report stays in ``reports/`` (git-ignored) for CI to keep.

testssl.sh is a system package (``make system-deps``): without it the test is skipped, visibly,
unless CI=true or REQUIRE_TESTSSL=1 is set, where a missing scanner is a failure.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TEMPLATE
from .served import mint_key, serve

REPORTS = TEMPLATE / "reports"
FAILING = ("MEDIUM", "HIGH", "CRITICAL")
# testssl's own verdicts on the scan itself: a check that could not run is not a pass...
SCAN_PROBLEMS = ("WARN", "FATAL")
# ...except this one, which races on the client side: testssl 3.0 runs `openssl s_client </dev/null`,
# which often exits before the TLS 1.3 session ticket (sent after the handshake) arrives, and then
# reports "check failed because of connect problem" for about one scan in three. Its results are
# INFO either way.
RACY_CHECKS = ("sessionresumption_ticket",)

# The only MEDIUM+ findings allowed, each because the certificate signs itself (no CA, so nothing
# can vouch for it or revoke it), matched on id and on testssl's wording so that any other reason
# for the same id still fails. The certificate is written valid for 90 days: testssl rates a
# certificate expiring within 60 days MEDIUM and within 30 days HIGH (cert_expirationStatus,
# cert_notAfter), which says nothing about the server's TLS configuration.
SELF_SIGNED = {
    "cert_chain_of_trust": re.compile(r"^failed \(self signed\)\.?$"),  # CRITICAL: no CA issued it.
    "cert_revocation": re.compile(r"^Neither CRL nor OCSP URI provided$"),  # HIGH: no CA to revoke it.
}

# SPEC "Transport and headers": TLS 1.2 and 1.3 only, forward-secret AEAD ciphers only, HSTS on
# every response. testssl 3.0 rates an offered TLS 1.1 or CBC suite, or a missing HSTS header, only
# LOW, so these are checked by name as well.
MUST_NOT_BE_OFFERED = (
    "SSLv2",
    "SSLv3",
    "TLS1",
    "TLS1_1",
    "cipherlist_NULL",
    "cipherlist_aNULL",
    "cipherlist_EXPORT",
    "cipherlist_LOW",
    "cipherlist_3DES_IDEA",
    "cipherlist_AVERAGE",  # obsolete CBC suites
)
MUST_BE_OFFERED = ("TLS1_2", "TLS1_3")
# One id from each requested check, so that a scan that silently skipped one cannot pass.
COVERAGE = (
    "TLS1_3",
    "cipherlist_STRONG",
    "PFS",
    "cipher_order",
    "cert_chain_of_trust",
    "HTTP_status_code",
    "BEAST",
)

# -p protocols, -s cipher categories, -f forward secrecy, -P server preferences, -S server defaults
# (certificate), -h HTTP headers, -U all vulnerabilities. Left out: -e (each of ~370 ciphers) and
# -c (client simulations), which only report INFO and would triple the run time.
CHECKS = ("-p", "-s", "-f", "-P", "-S", "-h", "-U")
SCAN_TIMEOUT = 600  # seconds; a clean scan takes well under a minute.

Finding = dict[str, str]


def find_testssl() -> str:
    binary = shutil.which("testssl") or shutil.which("testssl.sh")
    if binary is None:
        reason = "testssl.sh is not installed (make system-deps, or apt-get install testssl.sh)"
        if os.environ.get("REQUIRE_TESTSSL") == "1" or os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; required here (CI or REQUIRE_TESTSSL=1)")
        pytest.skip(f"{reason}: TLS scan skipped")
    return binary


def scan(testssl: str, port: int, reports: Path, name: str = "testssl") -> tuple[list[Finding], int]:
    """Run testssl against 127.0.0.1:port; keep ``<name>.json`` and ``<name>.log`` in ``reports``.

    Returns the findings and testssl's exit code, the number of checks that could not complete
    (each also reported as a WARN finding, which ``problems`` judges).

    No DNS lookups (``--nodns none``) and no OCSP or CRL fetching (``--phone-out`` stays off), so
    nothing leaves this machine. /healthz answers 200 without a key or a rate limit, so the header
    checks see a real response.
    """
    reports.mkdir(parents=True, exist_ok=True)
    json_file, log_file = reports / f"{name}.json", reports / f"{name}.log"
    for stale in (json_file, log_file):
        stale.unlink(missing_ok=True)  # testssl refuses to overwrite a report
    command = [
        testssl,
        *("--quiet", "--color", "0", "--warnings", "off", "--nodns", "none"),
        *("--connect-timeout", "10", "--openssl-timeout", "10"),
        *("--jsonfile", str(json_file), "--logfile", str(log_file)),
        *CHECKS,
        f"https://127.0.0.1:{port}/healthz",
    ]
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SCAN_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    # 240 and above: a fatal error (no connection, bad option, unwritable report), no findings.
    assert result.returncode < 240 and json_file.is_file(), f"testssl failed:\n{output[-6000:]}"
    findings: list[Finding] = json.loads(json_file.read_text(encoding="utf-8"))
    return findings, result.returncode


def allowed(finding: Finding) -> bool:
    pattern = SELF_SIGNED.get(finding["id"])
    return pattern is not None and bool(pattern.match(finding["finding"].strip()))


def problems(findings: list[Finding]) -> list[str]:
    """Every reason to fail, one line each; empty when the scan passes."""
    by_id = {finding["id"]: finding for finding in findings}
    lines = [
        f"{f['severity']} {f['id']}: {f['finding']}"
        for f in findings
        if (f["severity"] in FAILING and not allowed(f))
        or (f["severity"] in SCAN_PROBLEMS and f["id"] not in RACY_CHECKS)
    ]
    lines += [f"missing from the scan: {name}" for name in COVERAGE if name not in by_id]
    for name in MUST_NOT_BE_OFFERED:
        if name in by_id and not by_id[name]["finding"].startswith("not offered"):
            lines.append(f"SPEC {name}: {by_id[name]['finding']} (must not be offered)")
    if "HSTS" in by_id:  # only when the header is missing (a present one gives HSTS_time etc.)
        lines.append(f"SPEC HSTS: {by_id['HSTS']['finding']} (Strict-Transport-Security required)")
    for name in MUST_BE_OFFERED:
        if name in by_id and not by_id[name]["finding"].startswith("offered"):
            lines.append(f"SPEC {name}: {by_id[name]['finding']} (must be offered)")
    return lines


def note(finding: Finding) -> str:
    if allowed(finding):
        return "  (allowed: self-signed)"
    if finding["severity"] in SCAN_PROBLEMS and finding["id"] in RACY_CHECKS:
        return "  (ignored: testssl's own race)"
    return ""


def summary(findings: list[Finding]) -> str:
    counts = collections.Counter(f["severity"] for f in findings)
    order = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "OK", "INFO", "WARN", "FATAL")
    line = ", ".join(f"{severity} {counts[severity]}" for severity in order if counts[severity])
    notable = [
        f"  {f['severity']:<8} {f['id']}: {f['finding']}{note(f)}"
        for f in findings
        if f["severity"] in ("LOW", *FAILING, *SCAN_PROBLEMS)
    ]
    return "\n".join([f"testssl findings: {line}", *notable])


@pytest.fixture
def testssl() -> str:
    return find_testssl()


@pytest.fixture
def service(default_bake: Path, tmp_path: Path) -> Iterator[int]:
    _key, entry = mint_key(default_bake)
    yield from serve(default_bake, tmp_path, entry)


@pytest.mark.xdist_group("tls")
def test_testssl_finds_nothing_medium_or_worse_but_the_self_signed_certificate(
    testssl: str, service: int
) -> None:
    started = time.monotonic()
    findings, returncode = scan(testssl, service, REPORTS)
    elapsed = time.monotonic() - started
    print(f"\n{summary(findings)}\n  ({elapsed:.0f}s, exit {returncode}; report in {REPORTS}/testssl.json)")
    failures = problems(findings)
    assert not failures, "testssl (report in reports/testssl.json):\n" + "\n".join(failures)
