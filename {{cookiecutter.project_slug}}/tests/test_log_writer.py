"""The background log writer: a log reader that stops reading never blocks the code that logs
(not even gevent's event loop), a full queue drops lines and counts them (in the log and in
the metrics), queued lines are written at exit, and a forked child writes its own."""

from __future__ import annotations

import _thread
import json
import logging
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from flask import Flask

from {{ cookiecutter.package_name }} import logwriter
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint
from {{ cookiecutter.package_name }}.logging import JsonFormatter, MaskSecrets, logging_config
from {{ cookiecutter.package_name }}.logwriter import CAPACITY, BackgroundHandler, dropped_lines

from .support import PROJECT, KeySet, bearer, server_env

# Seconds a test waits for what should take milliseconds; only a hang reaches it.
PATIENCE = 30


def handler_on(stream: IO[str], capacity: int = CAPACITY) -> BackgroundHandler:
    handler = BackgroundHandler(stream, capacity)
    handler.addFilter(MaskSecrets(KEY_PREFIX))
    handler.setFormatter(JsonFormatter())
    return handler


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("tests.writer", logging.INFO, __file__, 1, message, None, None)


@pytest.fixture
def unread_pipe() -> Iterator[tuple[IO[str], IO[bytes]]]:
    """A pipe whose reader does not read until the test says so (a stalled log collector)."""
    reading, writing = os.pipe()
    with os.fdopen(writing, "w") as writer, os.fdopen(reading, "rb") as reader:
        yield writer, reader


class Stalled:
    """A stream without a file whose writes wait until released: a log sink that stopped."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.written: list[str] = []

    def write(self, text: str) -> None:
        self.release.wait(PATIENCE)
        self.written.append(text)

    def flush(self) -> None:
        pass


def in_thread(work: Callable[[], None]) -> bool:
    """Run ``work`` in a thread; True if it finished within PATIENCE (a blocked caller would not)."""
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(PATIENCE)
    return not worker.is_alive()


def wait_until_empty(handler: BackgroundHandler) -> None:
    while handler.queue.qsize():
        time.sleep(0.01)


def test_a_reader_that_stops_reading_never_blocks_the_caller_and_drops_are_counted(
    unread_pipe: tuple[IO[str], IO[bytes]],
) -> None:
    writer, reader = unread_pipe
    handler = handler_on(writer, capacity=100)
    before = dropped_lines()
    line = "x" * 500
    # 2 MB: thirty times what the pipe holds.
    assert in_thread(lambda: [handler.handle(record(f"{number} {line}")) for number in range(4000)])
    assert handler.dropped > 0
    assert dropped_lines() - before == handler.dropped
    # The reader comes back: what was queued is written, then a notice of what was dropped.
    drained: list[bytes] = []
    reading = threading.Thread(target=lambda: drained.append(reader.read()), daemon=True)
    reading.start()
    assert in_thread(lambda: wait_until_empty(handler))
    handler.handle(record("after the stall"))
    handler.close()
    writer.close()
    reading.join(PATIENCE)
    entries = [json.loads(text) for text in b"".join(drained).decode().splitlines()]
    numbers = [int(entry["message"].split()[0]) for entry in entries if entry["message"].endswith(line)]
    assert numbers == sorted(numbers)  # in order, whole lines, none twice
    # Each notice says how many were dropped since the one before: together, every one.
    notices = [entry for entry in entries if "dropped_lines" in entry]
    assert {notice["level"] for notice in notices} == {"WARNING"}
    assert sum(notice["dropped_lines"] for notice in notices) == handler.dropped == 4000 - len(numbers)
    assert entries[-1]["message"] == "after the stall"


def test_a_full_queue_drops_and_never_waits() -> None:
    stalled = Stalled()
    handler = handler_on(stalled, capacity=2)  # type: ignore[arg-type]
    try:
        assert in_thread(lambda: [handler.handle(record(f"line {number}")) for number in range(50)])
        # One line with the stalled writer, at most two queued: the rest was dropped.
        assert handler.dropped >= 47
    finally:
        stalled.release.set()
        handler.close()


@pytest.fixture
def metrics_app(make_app: Callable[..., Flask], keys: KeySet) -> tuple[Flask, dict[str, str]]:
    scraper = mint(KEY_PREFIX, key_id="prometheus", scopes=["metrics:read"], tenant="ops")
    return make_app(API_KEYS=f"{keys.entries},{scraper.entry}"), bearer(scraper)


def dropped_in_metrics(app: Flask, headers: dict[str, str]) -> float:
    text = app.test_client().get("/metrics", headers=headers).get_data(as_text=True)
    (line,) = [line for line in text.splitlines() if line.startswith("api_log_lines_dropped_total ")]
    return float(line.split()[1])


def test_dropped_lines_are_counted_in_the_metrics(metrics_app: tuple[Flask, dict[str, str]]) -> None:
    app, headers = metrics_app
    before = dropped_in_metrics(app, headers)
    stalled = Stalled()
    handler = handler_on(stalled, capacity=2)  # type: ignore[arg-type]
    try:
        for number in range(50):
            handler.handle(record(f"line {number}"))
    finally:
        stalled.release.set()
        handler.close()
    assert dropped_in_metrics(app, headers) - before == handler.dropped >= 47


def test_close_writes_every_queued_line() -> None:
    stalled = Stalled()
    handler = handler_on(stalled)  # type: ignore[arg-type]
    for number in range(500):
        handler.handle(record(f"line {number}"))
    stalled.release.set()
    handler.close()
    lines = "".join(stalled.written).splitlines()
    assert [json.loads(line)["message"] for line in lines] == [f"line {number}" for number in range(500)]


def test_a_forked_child_writes_its_own_lines(unread_pipe: tuple[IO[str], IO[bytes]]) -> None:
    """gunicorn forks its workers after its master set logging up: the child has no writer
    thread of its own unless one is started after the fork."""
    writer, reader = unread_pipe
    handler = handler_on(writer)
    handler.handle(record("from the parent"))
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        handler.handle(record("from the child"))
        handler.close()
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    handler.close()
    writer.close()
    messages = [json.loads(line)["message"] for line in reader.read().decode().splitlines()]
    assert sorted(messages) == ["from the child", "from the parent"]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=PROJECT,
        env=server_env({}),
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )


# As gunicorn does it: the master sets logging up, then forks a worker, which patches with
# gevent (the worker class does it) and leaves by SystemExit.
FORKED_WORKER = """
import logging, logging.config, os, sys
from {{ cookiecutter.package_name }}.logging import logging_config
logging.config.dictConfig(logging_config(key_prefix="PREFIX", json_lines=True, level="INFO", background=True))
worker = os.fork()
if worker:
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(worker, 0)[1]))
if "gevent" in sys.argv:
    from gevent import monkey; monkey.patch_all()
for number in range(3000):
    logging.getLogger("tests.exit").warning("line %d", number)
raise SystemExit(3)
"""


@pytest.mark.parametrize("patched", [False, True], ids=["threads", "gevent"])
def test_a_workers_queued_lines_are_written_when_it_exits(patched: bool) -> None:
    """gunicorn's workers leave by SystemExit: logging.shutdown closes the handler, which writes
    what is still queued."""
    code = FORKED_WORKER.replace("PREFIX", KEY_PREFIX)
    result = run_python(code, *(["gevent"] if patched else []))
    assert result.returncode == 3, result.stderr[-2000:]
    messages = [json.loads(line)["message"] for line in result.stderr.splitlines()]
    assert messages == [f"line {number}" for number in range(3000)]


def test_the_process_that_sets_logging_up_writes_in_order_with_what_it_prints() -> None:
    """gunicorn's master: a refused start is one line printed after "Starting gunicorn" was
    logged; a writer thread still busy with that line would cut the refusal in two."""
    code = """
import logging, logging.config, sys
from {{ cookiecutter.package_name }}.logging import logging_config
logging.config.dictConfig(logging_config(key_prefix="PREFIX", json_lines=True, level="INFO", background=True))
for number in range(200):
    logging.getLogger("gunicorn.error").info("Starting gunicorn %d", number)
sys.exit("error: PROMETHEUS_MULTIPROC_DIR: cannot prepare the directory (NotADirectoryError)")
""".replace("PREFIX", KEY_PREFIX)
    for _ in range(5):
        result = run_python(code)
        *logged, refusal = result.stderr.splitlines()
        assert [json.loads(line)["message"] for line in logged] == [
            f"Starting gunicorn {n}" for n in range(200)
        ]
        assert refusal == "error: PROMETHEUS_MULTIPROC_DIR: cannot prepare the directory (NotADirectoryError)"


def test_under_gevent_a_stalled_reader_does_not_freeze_the_event_loop(tmp_path: Path) -> None:
    """monkey.patch_all() makes threading.Thread a greenlet and queue.SimpleQueue gevent's: a
    writer made of those would write from the event loop, and the ticking greenlet would stop."""
    code = """
        from gevent import monkey; monkey.patch_all()
        import logging, os, time, gevent
        from {package}.logwriter import BackgroundHandler
        reading, writing = os.pipe()  # nobody reads it
        handler = BackgroundHandler(os.fdopen(writing, "w"), capacity=500)
        ticks = []
        def tick():
            while True:
                ticks.append(time.monotonic())
                gevent.sleep(0.005)
        ticker = gevent.spawn(tick)
        line = "x" * 1000
        for number in range(5000):  # 5 MB against a pipe of 64 KiB
            handler.handle(logging.makeLogRecord(dict(msg=line)))
            if number % 50 == 0:
                gevent.sleep(0)
        gevent.sleep(0.2)
        print(len(ticks), handler.dropped, flush=True)
        os._exit(0)  # the pipe is never read: do not wait for the writer at exit
    """
    result = run_python(code.format(package="{{ cookiecutter.package_name }}"))
    assert result.returncode == 0, result.stderr[-2000:]
    ticks, dropped = map(int, result.stdout.split())
    assert dropped > 4000
    assert ticks > 10  # the event loop kept running while the writer waited on the pipe


def test_the_service_configuration_writes_in_the_background_and_tests_write_at_once() -> None:
    config = logging_config(key_prefix=KEY_PREFIX, json_lines=True, level="INFO", background=True)
    for handler in config["handlers"].values():
        assert (handler["()"], handler["capacity"], handler["only_in_children"]) == (
            BackgroundHandler,
            CAPACITY,
            True,
        )
    config = logging_config(key_prefix=KEY_PREFIX, json_lines=True, level="INFO")
    for handler in config["handlers"].values():
        assert handler["class"] == "logging.StreamHandler"
    gunicorn_conf = (PROJECT / "gunicorn.conf.py").read_text()
    assert "background=True" in gunicorn_conf


def test_without_gevent_the_writer_is_made_of_the_standard_librarys_own_objects() -> None:
    """gevent.monkey.get_original is asked only where the process loaded gevent; elsewhere
    (tests, ``flask run``, a gthread worker) the objects are the standard library's."""
    assert logwriter.native("queue", "SimpleQueue") is queue.SimpleQueue
    assert logwriter.native("_thread", "start_new_thread") is _thread.start_new_thread
