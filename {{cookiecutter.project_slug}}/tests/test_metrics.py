"""GET /metrics: Prometheus text that prometheus_client's own parser reads, only for keys with the
metrics:read scope, with labels a client cannot choose and no piece of any key in it; and
through a real gunicorn with two workers, one scrape that sums them both.

Series are process-wide, like the workers' own: each test compares two scrapes.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.values import MultiProcessValue

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint
from {{ cookiecutter.package_name }}.metricfiles import FOLD_WAIT, LOCK, make_lock, reading, retire
from {{ cookiecutter.package_name }}.metrics import (
    METHODS,
    OTHER_METHOD,
    SCRAPE_LIMIT,
    UNMATCHED,
    database_pool,
    database_unavailable,
    off_the_loop,
    summed,
)
from {{ cookiecutter.package_name }}.settings import METRICS_DIR, ConfigError, export_metrics_dir, settings_from

from .support import (
    PROJECT,
    KeySet,
    Server,
    bearer,
    children,
    eventually,
    free_port,
    run_gunicorn,
    server_env,
)

Sample = tuple[str, frozenset[tuple[str, str]]]
SERIES = (
    "api_requests_total",
    "api_request_duration_seconds_count",
    "api_auth_failures_total",
    "api_rate_limited_total",
    "api_workers",
    "api_ratelimit_fallback_workers",
)
LABELS = {"route", "method", "status", "reason", "counted_by", "le", "state"}
FRAGMENT = 12
# Test-only access lines name the worker that answered each request.
WORKER_LOG = ("--access-logfile", "-", "--access-logformat", "worker=%(p)s")
ACCESS_LINE = re.compile(r"worker=<?(\d+)>?")


@pytest.fixture(scope="session")
def scraper() -> MintedKey:
    return mint(KEY_PREFIX, key_id="prometheus", scopes=["metrics:read"], tenant="ops")


@pytest.fixture
def env(env: dict[str, str], keys: KeySet, scraper: MintedKey) -> dict[str, str]:
    return {**env, "API_KEYS": f"{keys.entries},{scraper.entry}"}


def parse(text: str) -> dict[Sample, float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: FlaskClient, key: MintedKey) -> dict[Sample, float]:
    response = client.get("/metrics", headers=bearer(key))
    assert response.status_code == 200, response.get_data(as_text=True)
    return parse(response.get_data(as_text=True))


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: dict[Sample, float], route: str, method: str = "GET", status: str = "200") -> float:
    return value(samples, "api_requests_total", route=route, method=method, status=status)


# --- The format and who may read it ----------------------------------------------------------


def test_scrape_answers_text_that_prometheus_clients_own_parser_reads(
    client: FlaskClient, scraper: MintedKey
) -> None:
    client.get("/healthz")
    response = client.get("/metrics", headers=bearer(scraper))
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.headers["Cache-Control"] == "no-store"
    names = {name for name, _ in parse(response.get_data(as_text=True))}
    assert set(SERIES) - {"api_rate_limited_total", "api_auth_failures_total"} <= names


@pytest.mark.parametrize("sent", ["none", "malformed", "unknown", "expired"])
def test_scrape_without_a_valid_key_is_401(client: FlaskClient, keys: KeySet, sent: str) -> None:
    headers = {
        "none": {},
        "malformed": {"Authorization": f"Bearer {KEY_PREFIX}_not-a-key"},
        "unknown": bearer(keys.unconfigured),
        "expired": bearer(keys.expired),
    }[sent]
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.content_type == "application/problem+json"
    assert b"api_requests_total" not in response.data


@pytest.mark.parametrize("role", ["reader", "writer", "other_tenant", "no_scopes"])
def test_key_without_the_metrics_scope_is_403(client: FlaskClient, keys: KeySet, role: str) -> None:
    response = client.get("/metrics", headers=bearer(getattr(keys, role)))
    assert response.status_code == 403
    assert response.content_type == "application/problem+json"
    assert b"api_requests_total" not in response.data


def test_scrapes_have_their_own_limit_not_the_callers_default(
    make_app: Callable[..., Flask], scraper: MintedKey
) -> None:
    client = make_app(RATELIMIT_DEFAULT="1 per hour").test_client()
    answers = [client.get("/metrics", headers=bearer(scraper)) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200] * 5
    amount = SCRAPE_LIMIT.split()[0]
    assert answers[-1].headers["RateLimit-Policy"] == f'"metrics.scrape";q={amount};w=60'


def test_a_metrics_directory_that_is_a_file_stops_the_start(env: dict[str, str], tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(ConfigError, match=f"^{METRICS_DIR}: exists and is not a directory$"):
        settings_from({**env, METRICS_DIR: str(taken)})


def test_a_metrics_directory_that_does_not_exist_yet_is_accepted_as_an_absolute_path(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert settings_from({**env, METRICS_DIR: "metrics"}).metrics_dir == tmp_path / "metrics"


def test_the_metrics_directory_is_handed_to_prometheus_client_in_its_own_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(METRICS_DIR, "/elsewhere")  # restored after the test
    export_metrics_dir(tmp_path / "metrics")
    assert os.environ[METRICS_DIR] == str(tmp_path / "metrics")


# --- The series ------------------------------------------------------------------------------


def test_requests_are_counted_by_route_template_method_and_status(
    app: Flask, keys: KeySet, scraper: MintedKey
) -> None:
    client = app.test_client()
    item = app.extensions["stores"]["items"].add("acme", "widget")
    before = scrape(client, scraper)
    for item_id in (item.id, uuid.uuid4().hex, uuid.uuid4().hex):
        client.get(f"/v1/items/{item_id}", headers=bearer(keys.reader))
    client.post("/v1/items", headers=bearer(keys.writer), json={"name": "sprocket"})
    client.delete("/v1/whoami", headers=bearer(keys.reader))
    after = scrape(client, scraper)
    route = "/v1/items/<item_id>"
    assert requests(after, route) - requests(before, route) == 1
    assert requests(after, route, status="404") - requests(before, route, status="404") == 2
    assert requests(after, "/v1/items", "POST", "201") - requests(before, "/v1/items", "POST", "201") == 1
    assert requests(after, UNMATCHED, "DELETE", "405") - requests(before, UNMATCHED, "DELETE", "405") == 1
    assert not [labels for name, labels in after if ("route", f"/v1/items/{item.id}") in labels]


def label_values(samples: dict[Sample, float], name: str) -> set[str]:
    return {value for _, labels in samples for label, value in labels if label == name}


def test_paths_and_methods_a_client_chose_never_become_labels(
    app: Flask, keys: KeySet, scraper: MintedKey
) -> None:
    client = app.test_client()
    before = scrape(client, scraper)
    for number in range(40):
        client.get(f"/{uuid.uuid4().hex}/{number}", headers=bearer(keys.reader))
        client.open("/v1/whoami", method=f"X{uuid.uuid4().hex[:8].upper()}")
    after = scrape(client, scraper)
    templates = {rule.rule for rule in app.url_map.iter_rules()}
    assert label_values(after, "route") - label_values(before, "route") <= templates | {UNMATCHED}
    assert label_values(after, "method") <= METHODS | {OTHER_METHOD}
    assert {name for _, labels in after for name, _ in labels} <= LABELS


def test_failed_authentications_are_counted_by_reason(
    client: FlaskClient, keys: KeySet, scraper: MintedKey
) -> None:
    before = scrape(client, scraper)
    client.get("/v1/whoami")
    client.get("/v1/whoami", headers={"Authorization": f"Bearer {KEY_PREFIX}_not-a-key"})
    client.get("/v1/items", headers=bearer(keys.unconfigured))
    client.get("/v1/items", headers=bearer(keys.expired))
    client.get("/v1/items?api_key=x", headers=bearer(keys.reader))
    after = scrape(client, scraper)
    counted = {
        reason: value(after, "api_auth_failures_total", reason=reason)
        - value(before, "api_auth_failures_total", reason=reason)
        for reason in ("missing", "malformed", "unknown", "expired", "key_in_url")
    }
    assert counted == dict.fromkeys(counted, 1.0)


def test_rate_limited_requests_are_counted_by_route_and_by_what_was_counted(
    make_app: Callable[..., Flask], keys: KeySet, scraper: MintedKey
) -> None:
    client = make_app(RATELIMIT_DEFAULT="1 per hour", RATELIMIT_AUTH_FAILURES="1 per hour").test_client()
    before = scrape(client, scraper)
    over_key = [client.get("/v1/whoami", headers=bearer(keys.reader)).status_code for _ in range(3)]
    over_address = [client.get("/v1/items").status_code for _ in range(3)]
    after = scrape(client, scraper)
    assert over_key == [200, 429, 429]
    assert over_address == [401, 429, 429]

    def limited(route: str, counted_by: str) -> float:
        labels = {"route": route, "counted_by": counted_by}
        return value(after, "api_rate_limited_total", **labels) - value(
            before, "api_rate_limited_total", **labels
        )

    assert limited("/v1/whoami", "key") == 2
    assert limited("/v1/items", "address") == 2


def test_request_duration_is_a_histogram_with_one_count_per_request(
    client: FlaskClient, keys: KeySet, scraper: MintedKey
) -> None:
    before = scrape(client, scraper)
    for _ in range(7):
        client.get("/v1/whoami", headers=bearer(keys.reader))
    after = scrape(client, scraper)
    labels = {"route": "/v1/whoami", "method": "GET"}
    count = value(after, "api_request_duration_seconds_count", **labels)
    assert count - value(before, "api_request_duration_seconds_count", **labels) == 7
    buckets = sorted(
        (float(dict(sample_labels)["le"]), number)
        for (name, sample_labels), number in after.items()
        if name == "api_request_duration_seconds_bucket" and set(labels.items()) <= sample_labels
    )
    assert [number for _, number in buckets] == sorted(number for _, number in buckets)
    assert buckets[-1] == (float("inf"), count)
    assert value(after, "api_request_duration_seconds_sum", **labels) > 0


def test_fallback_gauge_is_1_while_the_limit_storage_does_not_answer(
    make_app: Callable[..., Flask], keys: KeySet, scraper: MintedKey
) -> None:
    client = make_app(RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{free_port()}/0").test_client()
    assert client.get("/v1/whoami", headers=bearer(keys.reader)).status_code == 200
    assert value(scrape(client, scraper), "api_ratelimit_fallback_workers") == 1
    memory = make_app().test_client()
    assert value(scrape(memory, scraper), "api_ratelimit_fallback_workers") == 0


def test_what_a_store_reports_of_its_pool_and_outages_is_scraped(app: Flask, scraper: MintedKey) -> None:
    client = app.test_client()
    # The series live as long as the process: other tests may have counted outages already, and
    # reported a pool state, so each state below differs from the one before in every number.
    before = value(scrape(client, scraper), "api_database_unavailable_total")
    database_unavailable()
    database_unavailable()
    states = ("in_use", "idle", "waiting")
    for report in ((3, 2, 1), (7, 0, 4)):
        database_pool(*report)
        samples = scrape(client, scraper)
        pool = {state: value(samples, "api_database_pool", state=state) for state in states}
        assert pool == dict(zip(states, report, strict=True))
        assert {labels for name, labels in samples if name == "api_database_pool"} == {
            frozenset({("state", state)}) for state in states
        }
    assert value(samples, "api_database_unavailable_total") == before + 2


# --- No key in the output ------------------------------------------------------------------


def fragments(secret: str) -> set[str]:
    """Every 12-character window of the key's random part (after ``<prefix>_``)."""
    body = secret[len(KEY_PREFIX) + 1 :]
    return {body[i : i + FRAGMENT] for i in range(len(body) - FRAGMENT + 1)}


def test_no_piece_of_any_key_appears_in_the_output(
    client: FlaskClient, keys: KeySet, scraper: MintedKey
) -> None:
    secrets = [getattr(keys, field.name).secret for field in dataclasses.fields(keys)]
    for secret in secrets:
        for header in ("Authorization", "X-API-Key", "X-Request-ID", "Cookie", "User-Agent"):
            value_sent = f"Bearer {secret}" if header == "Authorization" else secret
            client.get("/v1/whoami", headers={header: value_sent})
        for query in ("api_key", "token", "q"):
            client.get(f"/v1/items?{query}={secret}", headers=bearer(keys.reader))
        client.get(f"/v1/items/{secret}", headers=bearer(keys.reader))
        client.get(f"/{secret}/{secret}")
        client.post("/v1/items", headers=bearer(keys.writer), json={"name": secret})
        client.post("/v1/items", headers=bearer(keys.writer), data=secret, content_type="text/plain")
        client.open("/v1/whoami", method=secret.upper().replace("_", ""))
    text = client.get("/metrics", headers=bearer(scraper)).get_data(as_text=True)
    pieces = {piece for secret in [*secrets, scraper.secret] for piece in fragments(secret)}
    assert not [piece for piece in pieces if piece in text or piece.upper() in text]
    assert KEY_PREFIX + "_" not in text


# --- The files of workers that exited ----------------------------------------------------------


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory as a master makes it; prometheus_client's value class writes where the
    variable points, as in a worker."""
    monkeypatch.setenv(METRICS_DIR, str(tmp_path))
    make_lock(tmp_path)
    return tmp_path


@pytest.fixture
def dead_pids() -> Iterator[int]:
    """Process ids that no process can have: above the kernel's largest."""
    return iter(range(int(Path("/proc/sys/kernel/pid_max").read_text()) + 1, 1 << 31))


def worked(pid: int, requests: float, seconds: dict[str, float]) -> None:
    """The files a worker leaves, written by prometheus_client's own value class: a counter, and
    a histogram's buckets (each its own count, as a worker writes them) and sum."""
    values = MultiProcessValue(lambda: pid)
    route = ("route",), ("/v1/whoami",)
    values("counter", "api_requests", "api_requests_total", *route, "Requests.").inc(requests)
    for bound, count in seconds.items():
        values("histogram", "api_seconds", "api_seconds_bucket", ("le",), (bound,), "Seconds.").inc(count)
    values("histogram", "api_seconds", "api_seconds_sum", (), (), "Seconds.").inc(sum(seconds.values()) / 10)
    values.close_all_files()


def scraped(directory: Path) -> dict[Sample, float]:
    return parse(summed(directory).decode())


def test_an_app_given_a_metrics_directory_scrapes_the_sums_of_its_files(
    make_app: Callable[..., Flask], metrics_dir: Path, dead_pids: Iterator[int], scraper: MintedKey
) -> None:
    """As a worker forked by the master serves a scrape: from every worker's files, not only
    from the series of the process that answers."""
    worked(next(dead_pids), 3, {"+Inf": 3})
    worked(next(dead_pids), 4, {"+Inf": 4})
    client = make_app(**{METRICS_DIR: str(metrics_dir)}).test_client()
    assert value(scrape(client, scraper), "api_requests_total", route="/v1/whoami") == 7


def test_the_files_of_workers_that_exited_fold_into_one_per_kind_and_every_total_stays(
    metrics_dir: Path, dead_pids: Iterator[int]
) -> None:
    first, second, third = next(dead_pids), next(dead_pids), next(dead_pids)
    worked(first, 3, {"0.1": 2, "1.0": 1, "+Inf": 0})
    worked(second, 5, {"0.1": 1, "1.0": 3, "+Inf": 1})
    before = scraped(metrics_dir)
    retire(metrics_dir, first)
    assert scraped(metrics_dir) == before
    retire(metrics_dir, second)
    assert scraped(metrics_dir) == before
    assert sorted(path.name for path in metrics_dir.glob("*.db")) == ["counter_dead.db", "histogram_dead.db"]

    worked(third, 7, {"0.1": 0, "1.0": 0, "+Inf": 7})
    retire(metrics_dir, third)
    after = scraped(metrics_dir)
    assert sorted(path.name for path in metrics_dir.glob("*.db")) == ["counter_dead.db", "histogram_dead.db"]
    assert value(after, "api_requests_total", route="/v1/whoami") == 15
    buckets = [value(after, "api_seconds_bucket", le=bound) for bound in ("0.1", "1.0", "+Inf")]
    assert buckets == [3, 7, 15]  # cumulative, as Prometheus reads them, and each count once
    assert value(after, "api_seconds_count") == 15


def test_a_fold_never_runs_while_a_scrape_reads_and_the_next_exit_catches_up(
    metrics_dir: Path, dead_pids: Iterator[int]
) -> None:
    first, second = next(dead_pids), next(dead_pids)
    worked(first, 3, {"0.1": 3})
    before = scraped(metrics_dir)
    with reading(metrics_dir):  # a scrape in the middle of its reads
        started = time.monotonic()
        retire(metrics_dir, first)
        waited = time.monotonic() - started
        assert (metrics_dir / f"counter_{first}.db").exists(), "folded under a scrape's feet"
    assert FOLD_WAIT < waited < FOLD_WAIT + 30
    assert scraped(metrics_dir) == before

    worked(second, 4, {"0.1": 4})
    retire(metrics_dir, second)
    assert sorted(path.name for path in metrics_dir.glob("*.db")) == ["counter_dead.db", "histogram_dead.db"]
    assert value(scraped(metrics_dir), "api_requests_total", route="/v1/whoami") == 7


def test_a_file_that_cannot_be_folded_stays_counted_and_the_master_carries_on(
    metrics_dir: Path, dead_pids: Iterator[int], capsys: pytest.CaptureFixture[str]
) -> None:
    broken = next(dead_pids)
    # A first entry that claims to run past the end of the file: prometheus_client refuses it.
    used, entry = (64).to_bytes(4, "little"), (5000).to_bytes(4, "little")
    (metrics_dir / f"counter_{broken}.db").write_bytes(used + bytes(4) + entry + bytes(52))
    retire(metrics_dir, broken)
    assert (metrics_dir / f"counter_{broken}.db").exists()
    assert capsys.readouterr().err == "warning: metrics: could not fold a worker's files (RuntimeError)\n"


def test_a_scrape_sums_the_files_in_the_metrics_directory_of_the_settings(
    make_app: Callable[..., Flask],
    scraper: MintedKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dead_pids: Iterator[int],
) -> None:
    given, elsewhere = tmp_path / "given", tmp_path / "elsewhere"
    for directory in (given, elsewhere):
        directory.mkdir()
    make_lock(given)
    monkeypatch.setenv(METRICS_DIR, str(given))
    worked(next(dead_pids), 3, {"+Inf": 3})
    monkeypatch.setenv(METRICS_DIR, str(elsewhere))  # the environment is not where a scrape reads
    client = make_app(**{METRICS_DIR: str(given)}).test_client()
    assert value(scrape(client, scraper), "api_requests_total", route="/v1/whoami") == 3


def test_the_lock_of_a_metrics_directory_is_private_to_the_service(metrics_dir: Path) -> None:
    assert stat.S_IMODE((metrics_dir / LOCK).stat().st_mode) == 0o600


def test_an_exited_workers_live_gauges_leave_the_sums(
    metrics_dir: Path,
    dead_pids: Iterator[int],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmp_path = tmp_path_factory.mktemp("elsewhere")
    stays, exits = next(dead_pids), next(dead_pids)
    for pid in (stays, exits):
        values = MultiProcessValue(lambda pid=pid: pid)
        values("gauge", "api_workers", "api_workers", (), (), "Workers.", multiprocess_mode="livesum").set(1)
        values.close_all_files()
    assert value(scraped(metrics_dir), "api_workers") == 2
    monkeypatch.setenv(METRICS_DIR, str(tmp_path))  # the master names the directory itself
    retire(metrics_dir, exits)
    assert value(scraped(metrics_dir), "api_workers") == 1


def timed(pid: int, count: float) -> None:
    """The files of a worker that timed requests but counted none: a histogram's alone."""
    values = MultiProcessValue(lambda: pid)
    values("histogram", "api_seconds", "api_seconds_bucket", ("le",), ("+Inf",), "Seconds.").inc(count)
    values.close_all_files()


def test_a_workers_files_fold_only_once_its_process_id_runs_nothing_else_or_it_just_exited(
    metrics_dir: Path, dead_pids: Iterator[int]
) -> None:
    """gunicorn may give an exited worker's id to its replacement, which writes on in the same
    files: those wait until it exits. The worker that just exited folds even if its id runs."""
    running = subprocess.Popen(["sleep", "60"])  # a process id in use, as a replacement's
    try:
        worked(running.pid, 3, {"+Inf": 3})
        with reading(metrics_dir):  # its exit is not folded now: it waits for a later one
            retire(metrics_dir, running.pid)
        dead = next(dead_pids)
        timed(dead, 4)
        totals = scraped(metrics_dir)
        retire(metrics_dir, dead)
        assert sorted(path.name for path in metrics_dir.glob("*.db")) == [
            f"counter_{running.pid}.db",
            f"histogram_{running.pid}.db",
            "histogram_dead.db",
        ]
        assert scraped(metrics_dir) == totals
        retire(metrics_dir, running.pid)  # it exits for good (its id runs on here)
        assert sorted(path.name for path in metrics_dir.glob("*.db")) == [
            "counter_dead.db",
            "histogram_dead.db",
        ]
        assert scraped(metrics_dir) == totals
        with pytest.raises(subprocess.TimeoutExpired):  # asked whether it ran, never signalled
            running.wait(timeout=1)
    finally:
        running.kill()
        running.wait()


def unreadable(directory: Path) -> bytes:
    raise LookupError(directory.name)


# As gunicorn's gevent worker runs a scrape: threading patched, a greenlet ticking beside it.
PATCHED_SCRAPE = """
    import sys, time
    from gevent import monkey; monkey.patch_all()
    import gevent
    from pathlib import Path
    from {package}.metrics import off_the_loop
    pause = monkey.get_original("time", "sleep")
    ticks = []
    def tick():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.005)
    gevent.spawn(tick)
    gevent.sleep(0)
    def read(directory):
        pause(0.5)  # files the kernel is slow to read
        return directory.name
    def fail(directory):
        raise LookupError(directory.name)
    print(off_the_loop(read, Path(sys.argv[1])), len(ticks))
    try:
        off_the_loop(fail, Path(sys.argv[1]))
    except LookupError as error:
        print("raised", error)
"""


def test_a_scrape_reads_the_files_beside_gevents_event_loop_and_hands_back_the_text_or_the_error(
    tmp_path: Path,
) -> None:
    """Under gunicorn's gevent worker the read runs in a native thread, so the worker's other
    connections keep being served; its text, or its exception, comes back to the request."""
    assert off_the_loop(lambda directory: directory.name, tmp_path) == tmp_path.name
    with pytest.raises(LookupError, match=tmp_path.name):
        off_the_loop(unreadable, tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(PATCHED_SCRAPE.format(package="{{ cookiecutter.package_name }}")),
            str(tmp_path),
        ],
        cwd=PROJECT,
        env=server_env({}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (name, ticks), raised = (line.split(maxsplit=1) for line in result.stdout.splitlines())
    assert name == tmp_path.name
    assert int(ticks) > 10  # the event loop ran on while the read waited (on it: 1 tick)
    assert raised == ["raised", tmp_path.name]


# --- Two real gunicorn workers ----------------------------------------------------------------


def call(server: Server, context: ssl.SSLContext, path: str, key: MintedKey) -> tuple[int, str]:
    request = urllib.request.Request(server.url + path, headers=bearer(key))
    try:
        with urllib.request.urlopen(request, context=context, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def answered_by(server: Server) -> Counter[int]:
    """Requests per worker process id, from the test-only access lines."""
    return Counter(int(pid) for pid in ACCESS_LINE.findall(server.logs()))


def served_scrape(server: Server, context: ssl.SSLContext, scraper: MintedKey) -> dict[Sample, float]:
    status, text = call(server, context, "/metrics", scraper)
    assert status == 200, text
    return parse(text)


@pytest.fixture
def two_workers(start_server: Callable[..., Server], tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = start_server(
        *WORKER_LOG, WEB_CONCURRENCY="2", TMPDIR=str(temporary), RATELIMIT_DEFAULT="100000 per hour"
    )
    yield server, temporary
    server.stop()


@pytest.mark.slow
def test_one_scrape_sums_the_requests_of_two_gunicorn_workers_and_keeps_a_dead_workers_counts(
    two_workers: tuple[Server, Path],
    keys: KeySet,
    scraper: MintedKey,
    client_context: ssl.SSLContext,
    app: Flask,
) -> None:
    server, _ = two_workers
    sent = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        # Bursts a little apart, each request on its own connection: gunicorn hands a single
        # burst mostly to one worker.
        while len(answered_by(server)) < 2 and sent < 320:
            answers = pool.map(lambda _: call(server, client_context, "/v1/whoami", keys.reader), range(16))
            assert [status for status, _ in answers] == [200] * 16
            sent += 16
            time.sleep(0.2)
    workers = answered_by(server)
    assert len(workers) == 2, workers

    samples = served_scrape(server, client_context, scraper)
    assert requests(samples, "/v1/whoami") == sent
    labels = {"route": "/v1/whoami", "method": "GET"}
    assert value(samples, "api_request_duration_seconds_count", **labels) == sent
    assert value(samples, "api_workers") == 2
    # The database's series: a store with a pool reports it after every request, and the outage
    # counter with it; the SQLite store has no pool, and no request was answered 503.
    pooled = app.extensions["stores"].database.pool_usage() is not None
    shown = {name for name, _ in samples if name.startswith("api_database")}
    assert shown == ({"api_database_pool", "api_database_unavailable_total"} if pooled else set())

    # A worker dies and gunicorn replaces it. Once the replacement has served a request (so it
    # counts itself), one scrape still holds the dead worker's requests, and no longer counts it
    # as a worker: child_exit marked it dead (unmarked, api_workers would say 3).
    victim = next(iter(workers))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not set(answered_by(server)) - set(workers) and time.monotonic() < deadline:
        assert call(server, client_context, "/healthz", keys.reader)[0] == 200
        time.sleep(0.05)
    replacements = set(answered_by(server)) - set(workers)
    assert len(replacements) == 1, f"no new worker answered within 20 s: {answered_by(server)}"
    assert victim not in children(server.process.pid)
    samples = served_scrape(server, client_context, scraper)
    assert value(samples, "api_workers") == 2
    assert requests(samples, "/v1/whoami") == sent


@pytest.mark.slow
def test_the_master_makes_a_private_metrics_directory_and_removes_it_at_exit(
    two_workers: tuple[Server, Path], keys: KeySet, client_context: ssl.SSLContext
) -> None:
    server, temporary = two_workers
    assert call(server, client_context, "/v1/whoami", keys.reader)[0] == 200
    made = list(temporary.glob("metrics-*"))
    assert len(made) == 1
    assert made[0].is_dir()
    assert stat.S_IMODE(made[0].stat().st_mode) == 0o700
    assert list(made[0].glob("*.db")), "the workers write their series there"
    server.stop()
    assert not made[0].exists()


@pytest.mark.slow
def test_in_a_named_metrics_directory_each_master_makes_its_own_and_the_named_one_outlives_them(
    start_server: Callable[..., Server],
    keys: KeySet,
    scraper: MintedKey,
    client_context: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    directory = tmp_path / "metrics"
    first = start_server(**{METRICS_DIR: str(directory)})
    for _ in range(3):
        assert call(first, client_context, "/v1/whoami", keys.reader)[0] == 200
    assert requests(served_scrape(first, client_context, scraper), "/v1/whoami") == 3
    (made,) = directory.iterdir()
    assert made.name.startswith(f"metrics-{first.process.pid}-")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert list(made.glob("*.db")), "the workers write their series there"
    first.stop()
    assert directory.is_dir()
    assert list(directory.iterdir()) == []

    second = start_server(**{METRICS_DIR: str(directory)})
    assert requests(served_scrape(second, client_context, scraper), "/v1/whoami") == 0


@pytest.mark.slow
def test_an_unusable_metrics_directory_stops_gunicorn_with_one_line(
    env: dict[str, str], tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = {
        **env,
        "TLS_CERT_FILE": str(tls_files[0]),
        "TLS_KEY_FILE": str(tls_files[1]),
        "BIND": f"127.0.0.1:{free_port()}",
        METRICS_DIR: str(blocker / "metrics"),
    }
    log_path = tmp_path / "gunicorn.log"
    process = run_gunicorn(settings, log_path)
    assert process.wait(timeout=15) != 0
    output = log_path.read_text(encoding="utf-8")
    errors = [line for line in output.splitlines() if METRICS_DIR in line]
    assert errors == [f"error: {METRICS_DIR}: cannot prepare the directory (NotADirectoryError)"], output
    assert "Traceback" not in output
    assert str(blocker) not in output


@pytest.mark.slow
def test_worker_restarts_leave_a_bounded_number_of_files_and_totals_that_never_go_backwards(
    start_server: Callable[..., Server],
    keys: KeySet,
    scraper: MintedKey,
    client_context: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    # Each worker is replaced after 5 requests (gunicorn's max_requests): a dozen come and go.
    server = start_server(*WORKER_LOG, "--max-requests", "5", WEB_CONCURRENCY="2", TMPDIR=str(temporary))

    def files() -> list[Path]:
        return list(temporary.glob("metrics-*/*.db"))

    # A worker past max_requests stops within a second or so: requests a little apart, until a
    # dozen workers have come and gone, and a scrape after every few.
    sent, totals, most = 0, [], 0
    deadline = time.monotonic() + 120
    while len(answered_by(server)) < 12 and time.monotonic() < deadline:
        for _ in range(4):
            assert call(server, client_context, "/v1/whoami", keys.reader)[0] == 200
            sent += 1
            time.sleep(0.1)
        samples = served_scrape(server, client_context, scraper)
        totals.append((requests(samples, "/v1/whoami"), sent))
        most = max(most, per_kind(files()))
    assert len(answered_by(server)) >= 12, f"workers were not replaced: {answered_by(server)}"
    assert [total for total, _ in totals] == [sent_then for _, sent_then in totals]
    # Of each kind (a counter, a histogram, each kind of live gauge), two live workers' files, with
    # room for a worker being replaced while a scrape counted; the dead's, one file per kind.
    assert most <= 3, sorted(path.name for path in files())
    assert len([path for path in files() if path.name.endswith("_dead.db")]) <= 2
    eventually(lambda: per_kind(files()) <= 2)


def per_kind(paths: list[Path]) -> int:
    """The most files that one kind of series has among the live workers' (kind_<pid>.db)."""
    kinds = Counter(path.name.rsplit("_", 1)[0] for path in paths if not path.name.endswith("_dead.db"))
    return max(kinds.values(), default=0)


def waiting_on(path: Path) -> bool:
    """True while some process waits to lock ``path`` (Linux lists a waiter as ``->`` in
    /proc/locks, against the file's inode)."""
    inode = f":{path.stat().st_ino} "
    return any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


@pytest.mark.slow
def test_a_scrape_waiting_on_the_files_leaves_its_worker_serving(
    start_server: Callable[..., Server],
    keys: KeySet,
    scraper: MintedKey,
    client_context: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    """One worker; the files held (as the master holds them while it folds): the scrape waits in a
    thread of its own, while the worker's event loop goes on answering other requests."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = start_server(TMPDIR=str(temporary))
    assert call(server, client_context, "/healthz", keys.reader)[0] == 200
    (lock,) = temporary.glob(f"metrics-*/{LOCK}")
    descriptor = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        with ThreadPoolExecutor(max_workers=1) as pool:
            scrape = pool.submit(call, server, client_context, "/metrics", scraper)
            eventually(lambda: waiting_on(lock))
            assert [call(server, client_context, "/healthz", keys.reader)[0] for _ in range(3)] == [200] * 3
            assert not scrape.done(), "the scrape did not wait for the files"
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            assert scrape.result(timeout=15)[0] == 200
    finally:
        os.close(descriptor)
