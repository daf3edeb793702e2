"""No client can make logging slow or its lines long: masking takes time linear in its input on
text crafted against each of its patterns, client text is cut to the line's length before it is
masked, and every line a formatter writes fits in LOG_LINE_LIMIT (1 KiB by default), a
traceback's own lines kept apart."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import random
import re
import statistics
import time
import timeit
from collections.abc import Callable, Iterator
from types import TracebackType

import pytest
from flask import Flask

from {{ cookiecutter.package_name }} import requestlog
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX
from {{ cookiecutter.package_name }}.logging import (
    LINE_LIMIT,
    MASK,
    MAX_ITEMS,
    TRACEBACK_LIMIT,
    JsonFormatter,
    MaskSecrets,
    TextFormatter,
    cut_lines,
    cut_marker,
    cut_to,
    fit,
    json_size,
    logging_config,
    text_size,
)
from {{ cookiecutter.package_name }}.settings import ConfigError, settings_from

from .support import KeySet

FRAGMENT = 12
CUT = "[CUT "


def fragments(secret: str) -> set[str]:
    body = secret[len(KEY_PREFIX) + 1 :]
    return {body[i : i + FRAGMENT] for i in range(len(body) - FRAGMENT + 1)}


def assert_no_key(output: str, secret: str) -> None:
    leaked = sorted(part for part in fragments(secret) if part in output)
    assert not leaked, f"key fragments in {output!r}"


def repeat(unit: str, length: int) -> str:
    return (unit * (length // len(unit) + 1))[:length]


def framed(prefix: str, unit: str) -> Callable[[int], str]:
    """Text of a given length: ``prefix``, then ``unit`` over and over."""
    return lambda length: prefix + repeat(unit, length - len(prefix))


# Linear masking ----------------------------------------------------------------------------

# What the service logs for ordinary requests: addresses, request lines, statuses, ids.
PLAIN = framed(
    "", '127.0.0.1 "GET /v1/items/3f2b9c0d" 200 3ms rid=9f1c2b7e4d6a4c0e8b1f3a5d7c9e0b2f key=reader '
)
# Each aims at one alternative of the masking pattern, or at the base64 pass, with text that
# almost matches it over and over: what makes a backtracking pattern quadratic.
CRAFTED = {
    # The attack measured on a bake: the path "/%3F" + "key" * 1328, raw in gunicorn's lines and
    # decoded by Werkzeug in the request line; and an invalid header name gunicorn quotes.
    "query-word-without-equals": framed("GET /?", "key"),
    "query-word-percent-encoded": framed("GET /%3F", "key"),
    "header-name-of-query-words": framed(
        "Invalid request from ip=127.0.0.2: Invalid HTTP header name: '?", "key"
    ),
    "parameters-without-value": framed("GET /x", "&token"),
    "parameter-name-of-key-words": framed("GET /x;", "apikey"),
    "parameter-name-without-key-word": framed("GET /x?", "a"),
    "key-alphabet-run": framed("GET /", "aB3"),
    "almost-key-pieces": framed("GET /", "Ab1Cd2Ef3Gh-"),
    "base64-run": framed("X-Upstream-Auth: ", "QUJD"),
    "almost-base64-runs": framed("GET /", "abcdefghijklmnopqrstuvw!"),
    "percent-encoded-key-characters": framed("GET /", "%41"),
    "percent-encoded-splits": framed("GET /", "%20"),
    "almost-keys": framed("GET /", f"{KEY_PREFIX}_" + "%41" * (FRAGMENT - 1) + "!"),
    "repeated-prefix": framed("GET /", f"{KEY_PREFIX}_"),
    "prefix-split-by-spaces": framed("GET /", " ".join(f"{KEY_PREFIX}_") + " "),
    "prefix-split-by-indented-lines": framed("", f"{KEY_PREFIX}\n   "),
    "wrapped-line-then-spaces": framed(f"{KEY_PREFIX[0]}\n", " "),
    "credential-header-names": framed("", "-authorizatio"),
    "credential-headers-without-value": framed("", "Authorization "),
    "credential-header-then-spaces": framed("Cookie", " "),
    "repr-escapes": framed("", "\\x41"),
}
LENGTH = 2048
SAMPLES = 15
SAMPLE_SECONDS = 0.002  # at least: a sample of a cheap text is repeated until it is that long


def per_call(mask: Callable[[str], str], text: str) -> float:
    """CPU seconds of this thread for one masking of ``text``, from a sample long enough to
    measure: other processes (a loaded machine) and other threads (a test runner's own, such as
    mutation testing's) do not count."""
    calls = 1
    while (
        elapsed := timeit.timeit(lambda: mask(text), number=calls, timer=time.thread_time)
    ) < SAMPLE_SECONDS:
        calls *= 2
    return elapsed / calls


def median_ratios(mask: Callable[[str], str], plain: str, once: str, twice: str) -> tuple[float, float]:
    """The time of masking ``once`` against ``plain``, and ``twice`` against ``once``: the
    median of ratios taken within each sample, so that a noisy neighbour slows both sides of a
    ratio alike."""
    against_plain, doubled = [], []
    for _ in range(SAMPLES):
        plain_time, once_time, twice_time = (per_call(mask, text) for text in (plain, once, twice))
        against_plain.append(once_time / plain_time)
        doubled.append(twice_time / once_time)
    return statistics.median(against_plain), statistics.median(doubled)


@pytest.mark.parametrize("shape", CRAFTED)
def test_masking_crafted_text_costs_about_what_plain_text_does_and_grows_linearly(shape: str) -> None:
    """Python's re has no linear-time guarantee: a pattern that can backtrack costs the square
    of its input on text like this (45 ms per request against 2.6 ms, measured on a bake)."""
    crafted = CRAFTED[shape]
    against_plain, doubled = median_ratios(
        MaskSecrets(KEY_PREFIX).mask, PLAIN(LENGTH), crafted(LENGTH), crafted(2 * LENGTH)
    )
    assert against_plain < 3, f"{shape}: {against_plain:.1f} times plain text of the same length"
    assert doubled < 3, f"{shape}: twice as long costs {doubled:.1f} times as much"


def test_the_crafted_shapes_are_the_lengths_they_claim() -> None:
    """A shape that came out shorter than the plain text would make its ratio look better."""
    for shape, crafted in CRAFTED.items():
        assert len(crafted(LENGTH)) == len(PLAIN(LENGTH)) == LENGTH, shape


# Client text cut before masking -----------------------------------------------------------


class Recording(MaskSecrets):
    """The filter, keeping the length of every text it was asked to mask."""

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        super().__init__(KEY_PREFIX, limit)
        self.lengths: list[int] = []

    def mask(self, text: str) -> str:
        self.lengths.append(len(text))
        return super().mask(text)


def record(msg: str, *args: object, **attributes: object) -> logging.LogRecord:
    made = logging.LogRecord("tests.bounds", logging.WARNING, __file__, 1, msg, args, None)
    for name, value in attributes.items():
        setattr(made, name, value)
    return made


class Shown:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def test_every_text_of_a_record_is_cut_to_the_line_before_it_is_masked() -> None:
    long = "/%3F" + "key" * 4000
    filtering = Recording()
    made = record(
        "GET %s 404",
        long,
        path=long,
        headers={"X-Forwarded-For": long, long: "a name that long"},
        tried=[long, long],
        thing=Shown(long),
    )
    filtering.filter(made)
    assert filtering.lengths
    assert max(filtering.lengths) <= LINE_LIMIT
    (name,) = [name for name in made.headers if name != "X-Forwarded-For"]
    for text in (made.msg, made.path, made.headers["X-Forwarded-For"], name, *made.tried, made.thing):
        assert CUT in text
        assert len(text) < 2 * LINE_LIMIT


def test_a_cut_text_says_how_much_is_missing() -> None:
    filtering = MaskSecrets(KEY_PREFIX)
    made = record("%s", "x" * (LINE_LIMIT + 500))
    filtering.filter(made)
    assert made.msg == "x" * LINE_LIMIT + "[CUT 500 characters]"


def test_a_list_longer_than_a_line_can_show_is_cut_with_a_marker() -> None:
    filtering = MaskSecrets(KEY_PREFIX)
    made = record("ids", ids=list(range(10_000)))
    filtering.filter(made)
    assert made.ids[:3] == [0, 1, 2]
    assert made.ids[-1] == "[CUT 9900 items]"


@pytest.mark.parametrize("offset", range(LINE_LIMIT - 60, LINE_LIMIT + 10, 7))
def test_a_key_across_the_cut_leaves_no_piece_behind(keys: KeySet, offset: int) -> None:
    secret = keys.unconfigured.secret
    filtering = MaskSecrets(KEY_PREFIX)
    made = record("%s", "/" * offset + secret + "/" * 2000, path="/" * offset + secret)
    filtering.filter(made)
    assert_no_key(made.msg + made.path, secret)


def chained_failure(
    links: int, message: str
) -> tuple[type[BaseException], BaseException, TracebackType | None]:
    """An exception at the end of ``links`` others, each the cause of the next: a traceback of
    about five lines per link, none of them repeated (Python folds repeated frames)."""
    error: BaseException | None = None
    for number in range(links):
        try:
            raise ValueError(f"step {number}" if number < links - 1 else message) from error
        except ValueError as raised:
            error = raised
    assert error is not None
    return type(error), error, error.__traceback__


def test_a_traceback_is_cut_to_its_first_and_last_lines_before_it_is_masked(keys: KeySet) -> None:
    secret = keys.unconfigured.secret
    filtering = Recording()
    made = record("failed", exc_info=chained_failure(200, f"cannot use {secret}" + "!" * 5000))
    filtering.filter(made)
    assert max(filtering.lengths) <= TRACEBACK_LIMIT
    lines = made.exc_text.split("\n")
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1].startswith(f"ValueError: cannot use {MASK}!!!")
    assert lines[-1].endswith("characters]")
    assert any(line.startswith("[CUT ") and line.endswith(" lines]") for line in lines)
    assert_no_key(made.exc_text, secret)


# Lines within LOG_LINE_LIMIT --------------------------------------------------------------


def formatted(formatter: logging.Formatter, made: logging.LogRecord, limit: int = LINE_LIMIT) -> str:
    MaskSecrets(KEY_PREFIX, limit).filter(made)
    return formatter.format(made)


def physical_lines(text: str) -> list[bytes]:
    return [line.encode("utf-8", "backslashreplace") for line in text.split("\n")]


LONG_RECORDS: dict[str, Callable[[], logging.LogRecord]] = {
    "long-message": lambda: record("GET %s 404", "/" + "a" * 5000),
    "long-path-field": lambda: record("request", method="GET", path="/%3F" + "key" * 1328, status=404),
    "several-long-fields": lambda: record("x", a="a" * 900, b="b" * 900, c="c" * 900, status=404),
    "non-ascii": lambda: record("%s", "é☃😀" * 2000, path="/é" * 2000),
    "control-characters": lambda: record("%s", "\x1b\r\n" * 2000, path="\x00" * 3000),
    "json-escapes": lambda: record("%s", '"\\' * 3000),
    "long-list-and-dict": lambda: record(
        "x", ids=["abc"] * 500, headers={f"h{i}": "v" * 30 for i in range(500)}
    ),
    "many-small-fields": lambda: record("x", **{f"field_{i}": i for i in range(300)}),
    "long-object": lambda: record("x", thing=Shown("y" * 5000)),
}


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
@pytest.mark.parametrize("shape", LONG_RECORDS)
def test_no_line_is_longer_than_the_limit(formatter: logging.Formatter, shape: str) -> None:
    output = formatted(formatter, LONG_RECORDS[shape]())
    (line,) = physical_lines(output)
    assert len(line) <= LINE_LIMIT, (len(line), line[:200])
    assert CUT.encode() in line or b'"fields_cut": ' in line
    if isinstance(formatter, JsonFormatter):
        json.loads(line)


def test_the_long_field_gives_way_and_the_short_ones_stay_whole() -> None:
    made = record("request", method="GET", path="/" + "a" * 5000, status=404, key_id="reader")
    entry = json.loads(formatted(JsonFormatter(), made))
    assert (entry["message"], entry["method"], entry["status"], entry["key_id"]) == (
        "request",
        "GET",
        404,
        "reader",
    )
    assert entry["path"].startswith("/aaaa")
    assert entry["path"].endswith("characters]")


def test_a_record_with_more_fields_than_a_line_holds_keeps_its_message() -> None:
    made = record("done", **{f"field_{i}": i for i in range(300)})
    entry = json.loads(formatted(JsonFormatter(), made))
    assert (entry["message"], entry["fields_cut"]) == ("done", 300)


def failure_record(links: int, message: str) -> logging.LogRecord:
    stack = "Stack (most recent call last):\n" + "  here\n" * 900
    return record("Exception on /v1/items [GET]", exc_info=chained_failure(links, message), stack_info=stack)


@pytest.mark.parametrize("links", [1, 200])
def test_a_json_line_with_a_traceback_holds_it_within_its_own_bound(links: int) -> None:
    made = failure_record(links, "é" * 3000)
    line = formatted(JsonFormatter(), made)
    assert len(line.encode()) <= LINE_LIMIT + 2 * TRACEBACK_LIMIT
    entry = json.loads(line)
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].split("\n")[-1].startswith("ValueError: éé")
    assert entry["stack"].startswith("Stack (most recent call last):")


@pytest.mark.parametrize("links", [1, 200])
def test_every_line_of_a_text_traceback_fits_the_limit_and_the_end_is_kept(links: int) -> None:
    made = failure_record(links, "\x1b" * 3000)
    output = formatted(TextFormatter(), made)
    lines = physical_lines(output)
    assert all(len(line) <= LINE_LIMIT for line in lines), max(map(len, lines))
    text = output.split("\n")
    assert text[1] == "    | Traceback (most recent call last):"
    assert any(line.startswith("    | ValueError: \\u001b") for line in text)
    assert sum(map(len, lines)) <= LINE_LIMIT + 2 * TRACEBACK_LIMIT + 6 * len(lines)


def test_a_short_traceback_is_written_whole() -> None:
    made = record("failed", exc_info=chained_failure(3, "nothing secret"))
    entry = json.loads(formatted(JsonFormatter(), made))
    assert CUT not in entry["exception"]
    assert entry["exception"].endswith("ValueError: nothing secret")


@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "text"])
def test_the_line_limit_is_a_setting_the_logging_configuration_applies(json_lines: bool) -> None:
    config = logging_config(key_prefix=KEY_PREFIX, json_lines=json_lines, level="INFO", line_limit=4096)
    filtering = config["filters"]["mask"]["()"](KEY_PREFIX, config["filters"]["mask"]["limit"])
    formatter = config["formatters"]["lines"]["()"](limit=config["formatters"]["lines"]["limit"])
    made = record("%s", "a" * 10_000)
    filtering.filter(made)
    (line,) = physical_lines(formatter.format(made))
    assert 4000 < len(line) <= 4096


def test_log_line_limit_defaults_to_1_kib_and_refuses_what_cannot_hold_a_line(env: dict[str, str]) -> None:
    assert settings_from(env).log_line_limit == LINE_LIMIT == 1024
    assert settings_from({**env, "LOG_LINE_LIMIT": "8192"}).log_line_limit == 8192
    for value in ("100", "1e3", "70000"):
        with pytest.raises(ConfigError, match=r"^LOG_LINE_LIMIT: "):
            settings_from({**env, "LOG_LINE_LIMIT": value})


# Through the application ------------------------------------------------------------------


@pytest.fixture
def request_lines() -> Iterator[io.StringIO]:
    """The request log, written by the configured filter and JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskSecrets(KEY_PREFIX))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(requestlog.__name__)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_a_crafted_path_is_logged_once_cut_within_a_line(app: Flask, request_lines: io.StringIO) -> None:
    path = "/%3F" + "key" * 1328  # 3,988 bytes: the measured attack
    assert app.test_client().get(path).status_code == 404
    (line,) = request_lines.getvalue().splitlines()
    assert len(line) <= LINE_LIMIT
    entry = json.loads(line)
    assert (entry["message"], entry["method"], entry["status"]) == ("request", "GET", 404)
    assert entry["path"].startswith("/?keykey")
    assert entry["path"].endswith("characters]")
    assert line.count("/?key") == 1


def test_a_key_in_a_long_path_is_masked_and_the_line_fits(
    app: Flask, request_lines: io.StringIO, keys: KeySet
) -> None:
    secret: str = keys.unconfigured.secret
    path = "/v1/items/" + secret + "/" + "x" * 3500
    assert app.test_client().get(path, headers={"X-API-Key": keys.reader.secret}).status_code == 404
    (line,) = request_lines.getvalue().splitlines()
    assert len(line) <= LINE_LIMIT
    assert json.loads(line)["path"].startswith(f"/v1/items/{MASK}/xxx")
    assert_no_key(line, secret)


# Exact bounds: a text that fits is kept whole, a cut fills the room ----------------------------


def test_text_exactly_as_long_as_the_line_is_kept_whole() -> None:
    made = record("%s", "x" * LINE_LIMIT, ids=list(range(MAX_ITEMS)))
    MaskSecrets(KEY_PREFIX).filter(made)
    assert (made.msg, made.ids) == ("x" * LINE_LIMIT, list(range(MAX_ITEMS)))


def test_a_dict_longer_than_a_line_can_show_keeps_its_first_items() -> None:
    made = record("x", headers={f"h{number}": "v" for number in range(500)})
    MaskSecrets(KEY_PREFIX).filter(made)
    assert list(made.headers) == [f"h{number}" for number in range(MAX_ITEMS)]


@pytest.mark.parametrize(("length", "room"), [(20_000, 100), (1000, 100), (300, 57), (101, 100)])
def test_a_cut_text_fills_its_room_exactly_and_counts_what_is_missing(length: int, room: int) -> None:
    text = "".join(chr(ord("a") + number % 26) for number in range(length))
    cut = cut_to(text, room)
    assert len(cut) == room
    kept, count = re.fullmatch(r"(.*)\[CUT (\d+) characters\]", cut).groups()  # type: ignore[union-attr]
    assert text.startswith(kept)
    assert int(count) == length - len(kept)


def test_a_room_smaller_than_the_marker_gets_the_marker_alone() -> None:
    assert cut_to("abcdefghij" * 10, 5) == "[CUT 100 characters]"


def marked(result: str) -> tuple[list[str], int, list[str]]:
    """The lines before the marker, the count it gives, the lines after it."""
    lines = result.split("\n")
    (where,) = [n for n, line in enumerate(lines) if re.fullmatch(r"\[CUT \d+ lines\]", line)]
    return lines[:where], int(lines[where].split()[1]), lines[where + 1 :]


def test_a_traceback_keeps_as_many_first_lines_as_a_quarter_holds_and_last_lines_as_the_rest() -> None:
    lines = [f"{number:03d}" + "x" * 96 for number in range(50)]  # 100 characters with "\n"
    # 814 = 800 for the lines + "[CUT 50 lines]", the longest the marker can be: 2 + 6 lines.
    head, count, tail = marked(cut_lines("\n".join(lines), 814, LINE_LIMIT))
    assert (head, tail, count) == (lines[:2], lines[-6:], 42)
    # One character less is one line less.
    head, count, tail = marked(cut_lines("\n".join(lines), 813, LINE_LIMIT))
    assert (len(head), len(tail), count) == (1, 6, 43)


def test_a_traceback_of_empty_lines_is_counted_to_the_character() -> None:
    lines = [""] * 2000
    head, count, tail = marked(cut_lines("\n".join(lines), 800 + len("[CUT 2000 lines]"), LINE_LIMIT))
    assert (len(head), len(tail), count) == (200, 600, 1200)


def test_a_long_last_line_is_weighed_as_itself() -> None:
    lines = ["x" * 99] * 28 + ["the innermost frame " + "y" * 579, "ValueError: " + "z" * 87]
    head, count, tail = marked(cut_lines("\n".join(lines), 864, LINE_LIMIT))
    assert (len(head), count, tail) == (2, 27, lines[-1:])


def test_a_traceback_as_long_as_its_room_and_lines_as_long_as_theirs_are_kept_whole() -> None:
    text = "\n".join(["a" * 100] * 10)
    assert cut_lines(text, len(text), 100) == text


SIZES = {"characters": len, "json": json_size, "text": text_size}


@pytest.mark.parametrize("measure", SIZES)
@pytest.mark.parametrize("seed", range(12))
def test_a_cut_traceback_fits_its_room_and_no_further_line_would(measure: str, seed: int) -> None:
    size = SIZES[measure]
    shuffle = random.Random(seed)
    alphabet = 'abc "\\é😀\x1b'
    lines = ["".join(shuffle.choice(alphabet) for _ in range(shuffle.randrange(1, 120))) for _ in range(300)]
    room = shuffle.randrange(800, 4000)
    result = cut_lines("\n".join(lines), room, room // 2, size)
    head, count, tail = marked(result)
    assert size(result) <= room
    assert head == lines[: len(head)]
    assert tail == lines[len(lines) - len(tail) :]
    assert count == len(lines) - len(head) - len(tail)
    # No further line would fit: the room left is less than a line (and the digits the count
    # may lose: the marker's longest count is set aside).
    one_more = [lines[len(lines) - len(tail) - 1], *tail]
    assert size("\n".join([*head, cut_marker(count - 1, "lines"), *one_more])) > room - 3
    assert size("\n".join(head)) <= room // 4


def fill_to(formatter: logging.Formatter, limit: int, **extra: object) -> logging.LogRecord:
    """A record whose line is exactly ``limit`` bytes: its message fills what the rest leaves."""
    made = record("", **extra)
    made.created = 1_700_000_000.0
    room = limit - len(formatter.format(made).encode())
    made.msg = "m" * room
    return made


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
@pytest.mark.parametrize("excess", [0, 1])
def test_a_line_at_the_limit_is_whole_and_one_byte_more_is_cut_to_it(
    formatter: logging.Formatter, excess: int
) -> None:
    made = fill_to(formatter, LINE_LIMIT + excess, key_id="reader", status=404)
    line = formatter.format(made)
    assert len(line.encode()) == LINE_LIMIT
    assert (CUT in line) == bool(excess)
    assert line.endswith(
        "key_id=reader status=404" if isinstance(formatter, TextFormatter) else '"status": 404}'
    )


def test_a_dict_that_needs_no_cutting_stays_a_dict_in_a_line_that_does() -> None:
    entry = json.loads(JsonFormatter().format(record("m" * 2000, headers={"Accept": "application/json"})))
    assert entry["headers"] == {"Accept": "application/json"}
    assert entry["message"].endswith("characters]")


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_several_long_fields_are_cut_until_the_line_is_full_not_further(formatter: logging.Formatter) -> None:
    made = record("x", a="a" * 900, b="b" * 900, c="c" * 900, status=404)
    line = formatter.format(made)
    assert LINE_LIMIT - 3 < len(line.encode()) <= LINE_LIMIT  # each keeps as much as the others
    assert line.count(CUT) == 3
    assert line.endswith("status=404" if isinstance(formatter, TextFormatter) else '"status": 404}')


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
@pytest.mark.parametrize("value", ["é" * 5, "x" * 19, "é" * 19], ids=["shorter", "as-long", "longer"])
def test_more_fields_than_a_line_holds_still_give_a_line_within_the_limit(
    formatter: logging.Formatter, value: str
) -> None:
    """No field is replaced by a marker longer than itself; the line is still bounded (JSON
    keeps the message, text cuts the line)."""
    made = record("done", **{f"field_{number}": value for number in range(200)})
    line = formatter.format(made)
    assert len(line.encode()) <= LINE_LIMIT
    if isinstance(formatter, TextFormatter) and len(value.encode()) <= len(cut_marker(len(value))):
        assert f"done field_0={value} field_1={value}" in line


def test_a_json_line_in_a_tiny_limit_still_comes_out() -> None:
    line = JsonFormatter(limit=60).format(record("done", **{f"field_{number}": "v" for number in range(50)}))
    assert json.loads(line)["fields_cut"] == 50


def test_a_traceback_does_not_take_room_from_the_rest_of_its_json_line() -> None:
    made = record(
        "Exception on /v1/items [GET]", exc_info=chained_failure(200, "boom"), path="/v1/items", status=500
    )
    entry = json.loads(formatted(JsonFormatter(), made))
    assert (entry["message"], entry["path"], entry["status"]) == (
        "Exception on /v1/items [GET]",
        "/v1/items",
        500,
    )
    assert "fields_cut" not in entry
    assert TRACEBACK_LIMIT - 200 < json_size(entry["exception"]) <= TRACEBACK_LIMIT


def test_fields_cut_to_fit_keep_their_shape_as_text() -> None:
    """A dict over a line long is cut as its JSON text; an object as its str() (in a record the
    masking filter did not see: it would have made the object text already)."""
    finished = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    made = record("x", headers={f"h{number}": "v" * 30 for number in range(60)}, finished=finished)
    entry = json.loads(JsonFormatter().format(made))
    assert entry["headers"].startswith('{"h0": "vvv')
    assert entry["finished"] == "2024-05-01 12:30:00+00:00"
    entry = json.loads(JsonFormatter().format(record("x", thing=Shown("y" * 5000))))
    assert entry["thing"].startswith("yyyy")


@pytest.mark.parametrize("room", range(400, 1201, 7))
def test_long_parts_are_cut_to_the_largest_common_cap_that_fits(room: int) -> None:
    parts = {name: name * 500 for name in "abc"}
    fit(parts, room, len)
    (cap,) = {len(text) for text in parts.values()}
    assert 3 * cap <= room < 3 * (cap + 1)
    assert all(CUT in text for text in parts.values())
