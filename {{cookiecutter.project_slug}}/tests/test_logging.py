"""The masking filter on its own: every place a log record can carry a key, checked in the text
that a real handler writes (not only in what the filter returns)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import logging.config
import re
import sys
import traceback
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from werkzeug.datastructures import Headers

from {{ cookiecutter.package_name }} import keys as keys_module
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint
from {{ cookiecutter.package_name }}.logging import (
    CLEAN_REMEMBERED,
    LINE_LIMIT,
    MASK,
    JsonFormatter,
    MaskSecrets,
    Name,
    TextFormatter,
    configure,
    logging_config,
    request_id,
)

from .support import KeySet

# An opaque credential that is not shaped like a key of this service: only the header or
# query-parameter rules can catch it.
OPAQUE = "opaque-Credential-7Hq2xZ9w"
PLAIN = "%(levelname)s %(message)s"
FRAGMENT = 12  # a piece of a key this long in a log line counts as a leak

Emit = Callable[..., str]


def fragments(secret: str) -> set[str]:
    """Every 12-character window of the key's random part (after ``<prefix>_``)."""
    body = secret[len(KEY_PREFIX) + 1 :]
    return {body[i : i + FRAGMENT] for i in range(len(body) - FRAGMENT + 1)}


def assert_no_key(output: str, secret: str) -> None:
    assert secret not in output
    leaked = sorted(part for part in fragments(secret) if part in output)
    assert not leaked, f"key fragments in {output!r}"


def assert_masked(output: str, secret: str) -> None:
    assert_no_key(output, secret)
    assert MASK in output


def formatters() -> list[logging.Formatter]:
    return [logging.Formatter(PLAIN), TextFormatter(), JsonFormatter()]


@pytest.fixture
def key(keys: KeySet) -> MintedKey:
    return keys.reader


@pytest.fixture
def logger() -> logging.Logger:
    """A logger outside the logging tree: only the handler under test sees its records."""
    return logging.Logger("tests.masking", logging.DEBUG)


def handler_for(stream: io.StringIO, formatter: logging.Formatter | None) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskSecrets(KEY_PREFIX))
    handler.setFormatter(formatter or logging.Formatter(PLAIN))
    return handler


@pytest.fixture
def emit(logger: logging.Logger) -> Emit:
    """Log one record through a handler that carries the filter; return what it wrote."""

    def log(msg: object, *args: object, formatter: logging.Formatter | None = None, **kwargs: object) -> str:
        stream = io.StringIO()
        handler = handler_for(stream, formatter)
        logger.addHandler(handler)
        try:
            logger.info(msg, *args, **kwargs)
        finally:
            logger.removeHandler(handler)
        return stream.getvalue()

    return log


@pytest.fixture
def emit_record(logger: logging.Logger) -> Callable[..., str]:
    """Hand a prepared record to the handler, as a library that builds its own would."""

    def handle(record: logging.LogRecord, formatter: logging.Formatter | None = None) -> str:
        stream = io.StringIO()
        handler_for(stream, formatter).handle(record)
        return stream.getvalue()

    return handle


def record(msg: str, **attributes: object) -> logging.LogRecord:
    made = logging.LogRecord("tests.masking", logging.ERROR, __file__, 1, msg, None, None)
    for name, value in attributes.items():
        setattr(made, name, value)
    return made


def fail_with(secret: str) -> None:
    raise ValueError(f"cannot use {secret}")


# Message and arguments


def test_a_key_in_the_message_is_masked(emit: Emit, key: MintedKey) -> None:
    output = emit(f"presented {key.secret} for reader")
    assert output == f"INFO presented {MASK} for reader\n"


def test_a_key_in_tuple_args_is_masked(emit: Emit, key: MintedKey) -> None:
    output = emit("%s presented %s", "reader", key.secret)
    assert output == f"INFO reader presented {MASK}\n"


def test_a_key_in_dict_args_is_masked_as_gunicorn_access_passes_them(emit: Emit, key: MintedKey) -> None:
    atoms = {"m": "GET", "U": f"/v1/items/{key.secret}", "s": "404", "{x-api-key}i": key.secret}
    output = emit('"%(m)s %(U)s" %(s)s %({x-api-key}i)s', atoms)
    assert output == f'INFO "GET /v1/items/{MASK}" 404 {MASK}\n'


def test_a_key_in_a_non_string_message_is_masked(emit: Emit, key: MintedKey) -> None:
    assert_masked(emit({"authorization": f"Bearer {key.secret}"}), key.secret)


# Exceptions and stacks


@pytest.mark.parametrize("formatter", formatters(), ids=lambda formatter: type(formatter).__name__)
def test_a_key_in_an_exception_is_masked_and_the_traceback_frames_stay(
    emit: Emit, key: MintedKey, formatter: logging.Formatter
) -> None:
    try:
        fail_with(key.secret)
    except ValueError as error:
        output = emit("request failed", exc_info=error, formatter=formatter)
    assert_masked(output, key.secret)
    assert "Traceback (most recent call last)" in output
    assert "in fail_with" in output
    assert f"ValueError: cannot use {MASK}" in output


def test_a_key_in_a_chained_exception_is_masked(emit: Emit, key: MintedKey) -> None:
    try:
        try:
            fail_with(key.secret)
        except ValueError as error:
            raise RuntimeError(f"while checking {key.secret}") from error
    except RuntimeError as error:
        output = emit("request failed", exc_info=error)
    assert_masked(output, key.secret)
    assert "The above exception was the direct cause" in output


def test_a_traceback_that_a_formatter_cached_in_exc_text_is_masked(
    emit_record: Callable[..., str], key: MintedKey
) -> None:
    try:
        fail_with(key.secret)
    except ValueError:
        cached = traceback.format_exc()
    output = emit_record(record("request failed", exc_text=cached))
    assert_masked(output, key.secret)
    assert "in fail_with" in output


def test_a_key_in_stack_info_is_masked(emit_record: Callable[..., str], key: MintedKey) -> None:
    stack = "Stack (most recent call last):\n" + "".join(traceback.format_stack())
    output = emit_record(record("here", stack_info=f"{stack}  token = {key.secret!r}"))
    assert_masked(output, key.secret)
    assert "Stack (most recent call last)" in output


def test_a_real_stack_info_is_kept(emit: Emit) -> None:
    output = emit("where am I", stack_info=True)
    assert "Stack (most recent call last)" in output
    assert "test_a_real_stack_info_is_kept" in output


def test_a_json_line_carries_the_stack_as_stack(emit: Emit) -> None:
    entry = json.loads(emit("where am I", stack_info=True, formatter=JsonFormatter()))
    assert entry["stack"].startswith("Stack (most recent call last):")
    assert "test_a_json_line_carries_the_stack_as_stack" in entry["stack"]


@pytest.mark.parametrize(
    "message",
    ["nothing secret", "a trailing space ", "ends with X", "two\nlines"],
    ids=["plain", "trailing-space", "trailing-letter", "two-lines"],
)
def test_a_traceback_without_secrets_is_written_as_logging_writes_it(emit: Emit, message: str) -> None:
    """The filter formats tracebacks itself (to mask them): it must not change one that holds
    nothing to mask, not even the end of the exception's message."""
    try:
        raise ValueError(message)
    except ValueError:
        failure = sys.exc_info()
    traceback_text = logging.Formatter().formatException(failure)
    assert emit("failed", exc_info=failure) == f"INFO failed\n{traceback_text}\n"


# Extra fields


@pytest.mark.parametrize(
    "formatter", [TextFormatter(), JsonFormatter()], ids=lambda formatter: type(formatter).__name__
)
def test_a_key_in_extra_fields_is_masked(emit: Emit, key: MintedKey, formatter: logging.Formatter) -> None:
    extra = {
        "presented": key.secret,
        "request": {"headers": {"X-API-Key": key.secret}, "args": ["page=2", key.secret]},
        "tried": (key.secret,),
    }
    output = emit("checked", extra=extra, formatter=formatter)
    assert_masked(output, key.secret)


@pytest.mark.parametrize(
    "formatter", [TextFormatter(), JsonFormatter()], ids=lambda formatter: type(formatter).__name__
)
def test_a_key_inside_an_object_in_extra_fields_is_masked(
    emit: Emit, key: MintedKey, formatter: logging.Formatter
) -> None:
    extra = {
        "headers": Headers([("X-API-Key", key.secret)]),
        "body": json.dumps({"name": key.secret}).encode(),
        "error": ValueError(key.secret),
        "seen": {key.secret},
    }
    output = emit("checked", extra=extra, formatter=formatter)
    assert_masked(output, key.secret)


def test_extra_fields_without_secrets_keep_their_values_and_types(emit: Emit) -> None:
    extra = {"status": 200, "duration_ms": 1.5, "key_id": "reader", "cached": False, "tenant": None}
    line = json.loads(emit("done", extra=extra, formatter=JsonFormatter()))
    assert {name: line[name] for name in extra} == extra


def test_an_object_in_extra_fields_without_secrets_reaches_the_handler_as_itself() -> None:
    """Only text that held a secret is replaced: a formatter or handler of the project's own
    still gets the datetime, not its str()."""
    finished = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    made = record("done", finished=finished)
    MaskSecrets(KEY_PREFIX).filter(made)
    assert made.finished is finished


# Key shapes


def mistyped(secret: str) -> dict[str, str]:
    last = secret[-1]
    return {
        "wrong checksum": secret[:-1] + ("A" if last != "A" else "B"),
        "wrong character": secret[:20] + ("x" if secret[20] != "x" else "y") + secret[21:],
        "too short": secret[:-7],
        "too long": secret + "Zq7",
        "pasted twice": secret + secret,
    }


@pytest.mark.parametrize(
    "mistake", ["wrong checksum", "wrong character", "too short", "too long", "pasted twice"]
)
def test_a_mistyped_key_is_masked(emit: Emit, key: MintedKey, mistake: str) -> None:
    output = emit("presented %s", mistyped(key.secret)[mistake])
    assert_masked(output, key.secret)


@pytest.mark.parametrize("position", [2, len(KEY_PREFIX), len(KEY_PREFIX) + 1, 20, 41, 50])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\n    "], ids=["lf", "crlf", "indented"])
def test_a_key_split_across_two_lines_is_masked(
    emit: Emit, key: MintedKey, position: int, newline: str
) -> None:
    wrapped = key.secret[:position] + newline + key.secret[position:]
    output = emit("presented:\n%s\nend", wrapped)
    assert_masked(output, key.secret)
    for line in output.splitlines():
        assert not any(part in line for part in fragments(key.secret)), line


@pytest.mark.parametrize("split", [" ", "\t", "/", "+", "%20", "%2F", "%09", "\\t", "%0D%0A"])
@pytest.mark.parametrize("position", [len(KEY_PREFIX) + 3, 20, 30, 45])
def test_a_key_split_by_a_character_outside_its_alphabet_is_masked(
    emit: Emit, key: MintedKey, split: str, position: int
) -> None:
    output = emit("GET /v1/items/%s HTTP/1.1", key.secret[:position] + split + key.secret[position:])
    assert_masked(output, key.secret)


@pytest.mark.parametrize("split", [" ", "\t", "/", "+", "%20", "%2F", "%2f", "%09", "\\t", "\\x00", "\n  "])
@pytest.mark.parametrize("position", [2, len(KEY_PREFIX), len(KEY_PREFIX) + 1, len(KEY_PREFIX) + 3, 20, 45])
def test_a_key_split_by_one_character_outside_its_alphabet_is_masked_whole(
    emit: Emit, key: MintedKey, split: str, position: int
) -> None:
    """Not only its pieces: nothing of the key is left around the marker, the prefix included."""
    output = emit("GET /v1/items/%s HTTP/1.1", key.secret[:position] + split + key.secret[position:])
    assert output == f"INFO GET /v1/items/{MASK} HTTP/1.1\n"


def test_the_part_of_a_key_that_lost_its_prefix_is_masked(emit: Emit, key: MintedKey) -> None:
    rest = key.secret[20:]
    output = emit("Invalid request from ip=127.0.0.1: Invalid HTTP Version: %r", f"{rest} HTTP/1.1")
    assert_masked(output, key.secret)
    assert "HTTP/1.1" in output


def test_a_key_piece_alone_in_a_message_is_masked(emit: Emit, key: MintedKey) -> None:
    assert emit(key.secret[20:]) == f"INFO {MASK}\n"


def test_the_shortest_key_piece_alone_is_masked(emit: Emit, key: MintedKey) -> None:
    """A 12-character piece counts as a leak (FRAGMENT): one alone in a line is masked."""
    piece = next(
        part
        for part in sorted(fragments(key.secret))
        if all(re.search(kind, part) for kind in ("[0-9]", "[A-Z]", "[a-z]"))
    )
    assert emit(piece) == f"INFO {MASK}\n"


@pytest.mark.parametrize(("text", "shown"), [("?key=s3cret", "?key="), ("Cookie: s=1", "Cookie: ")])
def test_a_short_credential_is_masked(emit: Emit, text: str, shown: str) -> None:
    assert emit(text) == f"INFO {shown}{MASK}\n"


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode], ids=["standard", "urlsafe"])
def test_a_key_inside_base64_credentials_is_masked(emit: Emit, key: MintedKey, encode) -> None:
    basic = encode(f"client:{key.secret}".encode()).decode()
    output = emit("Invalid HTTP Header: %r", f"Authorization Basic {basic}")
    assert basic not in output
    assert MASK in output


# User names whose encodings hold the special characters of each alphabet ("+" and "/", or
# "-" and "_"; "???" gives a urlsafe "_" without a "-"), of lengths 3 and 6 to 12: each
# amount of padding goes missing once stripped, at several lengths of the encoded run.
ENCODED_USERS = ["???", *(">>>???" + "x" * extra for extra in range(7))]


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode], ids=["standard", "urlsafe"])
@pytest.mark.parametrize("user", ENCODED_USERS)
def test_base64_credentials_holding_a_key_are_masked_whole_under_any_header(
    emit: Emit, key: MintedKey, encode: Callable[[bytes], bytes], user: str, padded: bool
) -> None:
    """Not only the key's part: the whole run goes, in either alphabet, with or without its
    padding, even under a header name that the credential-header rule does not know."""
    encoded = encode(f"{user}:{key.secret}".encode()).decode()
    encoded = encoded if padded else encoded.rstrip("=")
    output = emit("Invalid HTTP Header: %r", f"X-Upstream-Auth: {encoded}")
    assert output == f"INFO Invalid HTTP Header: 'X-Upstream-Auth: {MASK}'\n"


@pytest.mark.parametrize("separator", ["%5F", "%5f"])
def test_a_percent_encoded_key_is_masked(emit: Emit, key: MintedKey, separator: str) -> None:
    encoded = key.secret.replace("_", separator, 1)
    output = emit("Invalid HTTP request line: %r", f"GET /v1/items/{encoded} HTTP/1.1 junk")
    assert output == f"INFO Invalid HTTP request line: 'GET /v1/items/{MASK} HTTP/1.1 junk'\n"


def test_several_keys_in_one_message_are_all_masked(emit: Emit, keys: KeySet) -> None:
    output = emit("%s,%s;%s", keys.reader.secret, keys.writer.secret, keys.unconfigured.secret)
    assert output == f"INFO {MASK},{MASK};{MASK}\n"


# Credential headers and query parameters (values that are not shaped like a key)


@pytest.mark.parametrize(
    ("text", "visible"),
    [
        (f"Authorization: Bearer {OPAQUE}", "Authorization"),
        (f"proxy-authorization: Basic {OPAQUE}", "proxy-authorization"),
        (f"X-API-Key: {OPAQUE}", "X-API-Key"),
        (f"Cookie: session={OPAQUE}; theme=dark", "Cookie"),
        (f"Set-Cookie: session={OPAQUE}; HttpOnly", "Set-Cookie"),
        (str({"Authorization": f"Bearer {OPAQUE}", "Host": "example.com"}), "example.com"),
        (str({"x-api-key": OPAQUE, "Accept": "application/json"}), "application/json"),
        (json.dumps({"Cookie": f"session={OPAQUE}", "Accept": "*/*"}), "Accept"),
        (str(Headers([("Authorization", f"Bearer {OPAQUE}"), ("Host", "example.com")])), "Host"),
        (repr(Headers([("Authorization", f"Bearer {OPAQUE}"), ("Host", "example.com")])), "Host"),
        (str({"HTTP_AUTHORIZATION": f"Bearer {OPAQUE}", "PATH_INFO": "/v1/items"}), "PATH_INFO"),
        (str({"HTTP_X_API_KEY": OPAQUE, "HTTP_COOKIE": f"s={OPAQUE}"}), "HTTP_COOKIE"),
    ],
    ids=[
        "authorization-line",
        "proxy-authorization-line",
        "x-api-key-line",
        "cookie-line",
        "set-cookie-line",
        "dict-repr",
        "dict-repr-lowercase",
        "json",
        "werkzeug-headers-str",
        "werkzeug-headers-repr",
        "wsgi-environ",
        "wsgi-environ-api-key-and-cookie",
    ],
)
def test_credential_header_values_are_masked(emit: Emit, text: str, visible: str) -> None:
    output = emit("headers: %s", text)
    assert OPAQUE not in output
    assert MASK in output
    assert visible in output


def test_a_credential_header_keeps_its_name_and_shows_the_marker(emit: Emit) -> None:
    assert emit(f"Authorization: Bearer {OPAQUE}") == f"INFO Authorization: {MASK}\n"


@pytest.mark.parametrize(
    "query",
    [
        f"?api_key={OPAQUE}",
        f"?x=1&access_token={OPAQUE}",
        f"?API_KEY={OPAQUE}",
        f"?Api-Key={OPAQUE}",
        f"?apikey={OPAQUE}&page=2",
        f"?page=2&Access_Token={OPAQUE}",
        f"?api%5Fkey={OPAQUE}",
        f";token={OPAQUE}",
    ],
)
def test_key_like_query_parameters_are_masked(emit: Emit, query: str) -> None:
    output = emit("Error handling request GET %s", f"/v1/items{query}")
    assert OPAQUE not in output
    assert f"GET /v1/items{query[0]}" in output
    assert MASK in output


def test_ordinary_query_parameters_stay_visible(emit: Emit) -> None:
    assert emit("GET /v1/items?page=2&sort=name") == "INFO GET /v1/items?page=2&sort=name\n"


# What stays


def test_the_key_id_stays_visible(emit: Emit, key: MintedKey) -> None:
    output = emit("key %s accepted as %s", key.secret, key.key.key_id, extra={"key_id": key.key.key_id})
    assert_masked(output, key.secret)
    assert "accepted as reader" in output
    assert "key_id=reader" in emit("ok", extra={"key_id": "reader"}, formatter=TextFormatter())


def test_a_name_as_long_as_the_limit_stays_and_a_longer_one_is_masked() -> None:
    masking = MaskSecrets(KEY_PREFIX, limit=24)
    at_limit, over = (
        logging.makeLogRecord({"key_id": Name("n" * 24)}),
        logging.makeLogRecord({"key_id": Name("n" * 25)}),
    )
    masking.filter(at_limit)
    masking.filter(over)
    assert (at_limit.key_id, over.key_id) == ("n" * 24, MASK)


# Names the key ring accepts although they start like a key: they hold no whole key.
LOOKALIKE_NAMES = [f"{KEY_PREFIX}_{name}" for name in ("integrations", "corporation1", "Billing2026Team")]


@pytest.mark.parametrize("name", LOOKALIKE_NAMES)
@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_name_that_only_starts_like_a_key_stays_visible_in_its_field(
    emit: Emit, name: str, formatter: logging.Formatter
) -> None:
    """As the key ring draws the line (holds_a_key), so does the filter: the line names its caller."""
    output = emit("request", extra={"key_id": Name(name)}, formatter=formatter)
    assert name in output
    assert MASK not in output
    # The same text sent by a client is masked like any piece of a key: nothing vouches for it.
    assert name not in emit("GET /%s", name)


@pytest.mark.parametrize("shape", ["{key}", "team-{key}", "{body}"], ids=["key", "glued", "without-prefix"])
def test_a_name_that_holds_a_whole_key_is_masked(emit: Emit, key: MintedKey, shape: str) -> None:
    name = Name(shape.format(key=key.secret, body=key.secret[len(KEY_PREFIX) + 1 :]))
    assert_masked(emit("request", extra={"key_id": name}, formatter=JsonFormatter()), key.secret)


def test_a_name_longer_than_a_line_is_masked_unread(emit: Emit) -> None:
    """No name the ring accepts is that long; whatever was wrapped as one is not scanned."""
    output = emit("request", extra={"key_id": Name("n" * (LINE_LIMIT + 1))}, formatter=JsonFormatter())
    assert json.loads(output)["key_id"] == MASK


def test_the_request_line_names_a_key_whose_id_and_tenant_start_like_a_key(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    key_id, tenant = LOOKALIKE_NAMES[:2]
    minted = mint(KEY_PREFIX, key_id=key_id, scopes=["items:read"], tenant=tenant)
    client = make_app(API_KEYS=minted.entry).test_client()
    with caplog.at_level(logging.INFO):
        response = client.get("/v1/whoami", headers={"Authorization": f"Bearer {minted.secret}"})
    assert response.status_code == 200
    assert response.json == {"key_id": key_id, "tenant": tenant, "scopes": ["items:read"]}
    (line,) = [r for r in caplog.records if r.name.endswith("requestlog")]
    stream = io.StringIO()
    handler_for(stream, JsonFormatter()).handle(line)
    assert json.loads(stream.getvalue())["key_id"] == key_id


@pytest.mark.parametrize(
    "message",
    [
        "GET /v1/items 200",
        "Booting worker with pid: 4242",
        "Invalid request from ip=127.0.0.1: Request Line is too large (5084 > 4094)",
        f'File "/srv/app/src/{keys_module.__name__.replace(".", "/")}.py", line 63, in verify',
        f"Exception on /v1/items [GET] in {keys_module.__name__}",
        "request_id=9f1c2b7e4d6a4c0e8b1f3a5d7c9e0b2f key_id=reader tenant=globex",
        "Listening at: https://127.0.0.1:8443 (4242)",
        "WWW-Authenticate was sent; 401 for an unknown key",
        "item 3f2b9c0d8e7a4f1b9c2d3e4f5a6b7c8d of tenant acme",
        "client_request_id=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "Authorization header missing",
    ],
)
def test_messages_without_secrets_are_unchanged(emit: Emit, message: str) -> None:
    assert emit(message) == f"INFO {message}\n"


# Lines a client cannot forge


@pytest.mark.parametrize("text", ["x\r\n12:00:00 INFO audit: forged", "x\u2028forged", "x\x1b[2Jforged"])
def test_control_characters_from_a_client_are_escaped_in_text_lines(emit: Emit, text: str) -> None:
    output = emit("GET %s 404", text, formatter=TextFormatter(), extra={"path": text})
    assert output.count("\n") == 1
    assert "forged" in output


@pytest.mark.parametrize(
    ("text", "shown"),
    [("a\r\nb", "a\\r\\nb"), ("a\x1bb", "a\\u001bb"), ("a\u2028b", "a\\u2028b"), ("a\x7fb", "a\\u007fb")],
    ids=["crlf", "escape", "line-separator", "delete"],
)
def test_a_control_character_is_shown_as_its_escape(text: str, shown: str) -> None:
    line = TextFormatter().format(record(text))
    assert line.endswith(f"ERROR tests.masking: {shown}")


def test_a_text_line_is_time_level_logger_message_then_its_extras() -> None:
    line = TextFormatter().format(record("ready"))
    assert re.fullmatch(r"\d\d:\d\d:\d\d ERROR tests\.masking: ready", line), line
    line = TextFormatter().format(record("ready", path="/v1/items", status=200))
    assert re.fullmatch(r"\d\d:\d\d:\d\d ERROR tests\.masking: ready path=/v1/items status=200", line), line


def test_a_text_line_formats_a_traceback_and_a_stack_it_is_handed_directly() -> None:
    """Records that did not pass the filter (a handler added later) still get every line indented."""
    try:
        fail_with("nothing secret")
    except ValueError:
        failed = record(
            "failed", exc_info=sys.exc_info(), stack_info="Stack (most recent call last):\n  here"
        )
    first, *rest = TextFormatter().format(failed).split("\n")
    assert first.endswith("ERROR tests.masking: failed")
    assert "    | Traceback (most recent call last):" in rest
    assert "    | ValueError: cannot use nothing secret" in rest
    assert rest[-2:] == ["    | Stack (most recent call last):", "    |   here"]


def test_a_traceback_in_a_text_line_is_indented_under_its_record(emit: Emit, key: MintedKey) -> None:
    try:
        raise ValueError("bad\r\n12:00:00 INFO audit: forged")
    except ValueError as error:
        output = emit("failed", exc_info=error, formatter=TextFormatter())
    first, *rest = output.rstrip("\n").split("\n")
    assert "failed" in first
    assert rest
    assert all(line.startswith("    | ") for line in rest)


# Robustness


def test_the_filter_never_drops_a_record(key: MintedKey) -> None:
    mask = MaskSecrets(KEY_PREFIX)
    records = [
        record("plain"),
        record(f"secret {key.secret}"),
        record("broken %d"),
        record(f"Authorization: Bearer {OPAQUE}", exc_text="Traceback ...", stack_info="Stack ..."),
    ]
    records[2].args = ("not a number",)
    assert all(mask.filter(each) for each in records)


def test_a_broken_format_string_is_logged_masked_without_raising(emit: Emit, key: MintedKey) -> None:
    output = emit("key %s count %d", key.secret, "not a number")
    assert_no_key(output, key.secret)
    assert output.startswith("INFO key %s count %d")
    assert output.count("\n") == 1


def test_a_missing_mapping_key_is_logged_without_raising(emit: Emit, key: MintedKey) -> None:
    output = emit("%(missing)s %(U)s", {"U": f"/v1/items/{key.secret}"})
    assert_no_key(output, key.secret)
    assert output.count("\n") == 1


def test_an_unprintable_message_is_logged_without_raising(emit: Emit) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    output = emit(Unprintable())
    assert output.count("\n") == 1


def test_a_record_that_cannot_be_masked_is_replaced_by_the_marker_extra_fields_included(
    emit: Emit, key: MintedKey
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    extra = {"presented": key.secret, "body": Unprintable()}
    entry = json.loads(emit("checked %s", key.secret, extra=extra, formatter=JsonFormatter()))
    assert entry["message"] == f"{MASK} (a log record that could not be masked)"
    assert (entry["presented"], entry["body"]) == (MASK, MASK)


def test_clean_text_is_remembered_up_to_a_bound_and_masked_text_never(key: MintedKey) -> None:
    """A client sending ever new paths costs the filter a bounded memory, and what it remembers
    holds no secret."""
    mask = MaskSecrets(KEY_PREFIX)
    for number in range(CLEAN_REMEMBERED + 1):
        mask.mask(f"GET /v1/items/{number} 200")
        assert len(mask.clean) <= CLEAN_REMEMBERED
    assert f"GET /v1/items/{CLEAN_REMEMBERED} 200" in mask.clean
    mask.mask(f"GET /v1/items/{key.secret} 404")
    assert not any(part in text for text in mask.clean for part in fragments(key.secret))


def test_a_record_is_masked_once_even_through_several_handlers(
    logger: logging.Logger, key: MintedKey
) -> None:
    streams = [io.StringIO(), io.StringIO()]
    for stream, formatter in zip(streams, (TextFormatter(), JsonFormatter()), strict=True):
        logger.addHandler(handler_for(stream, formatter))
    try:
        fail_with(key.secret)
    except ValueError:
        logger.exception("failed for %s", key.secret)
    for stream in streams:
        assert_masked(stream.getvalue(), key.secret)
        assert "in fail_with" in stream.getvalue()


# Request id and wiring


@pytest.mark.parametrize(
    "formatter", [TextFormatter(), JsonFormatter()], ids=lambda formatter: type(formatter).__name__
)
def test_the_request_id_is_on_every_line_and_a_key_sent_as_one_is_masked(
    emit: Emit, key: MintedKey, formatter: logging.Formatter
) -> None:
    token = request_id.set("rid-0123456789")
    try:
        assert "rid-0123456789" in emit("GET /v1/items 200", formatter=formatter)
    finally:
        request_id.reset(token)
    token = request_id.set(key.secret)
    try:
        assert_masked(emit("GET /v1/items 401", formatter=formatter), key.secret)
    finally:
        request_id.reset(token)


def test_a_request_id_given_in_extra_fields_is_kept(emit: Emit) -> None:
    """A line logged for another request (a queued job naming the request that made it) keeps
    the id it was given; the current request's id fills in only a missing one."""
    token = request_id.set("rid-current")
    try:
        entry = json.loads(emit("job done", extra={"request_id": "rid-original"}, formatter=JsonFormatter()))
    finally:
        request_id.reset(token)
    assert entry["request_id"] == "rid-original"


def test_the_filter_on_a_handler_masks_records_of_child_loggers(key: MintedKey) -> None:
    parent = logging.getLogger("tests.masking.parent")
    stream = io.StringIO()
    handler = handler_for(stream, None)
    parent.addHandler(handler)
    try:
        logging.getLogger(f"{parent.name}.child.grandchild").warning("from below: %s", key.secret)
    finally:
        parent.removeHandler(handler)
    assert stream.getvalue() == f"WARNING from below: {MASK}\n"


@pytest.mark.parametrize("json_lines", [True, False])
def test_every_configured_handler_carries_the_filter(json_lines: bool) -> None:
    config = logging_config(key_prefix=KEY_PREFIX, json_lines=json_lines, level="INFO")
    assert config["handlers"]
    for handler in config["handlers"].values():
        assert handler["filters"] == ["mask"]
    assert config["filters"]["mask"]["()"] is MaskSecrets
    for name in ("gunicorn.error", "gunicorn.access"):
        assert config["loggers"][name]["handlers"]
        assert config["loggers"][name]["propagate"] is False
    assert config["root"]["handlers"]


@pytest.fixture
def process_logging() -> Iterator[None]:
    """Put back the session's logging after a test applies a configuration to the process."""
    loggers = [logging.getLogger(), logging.getLogger("gunicorn.error"), logging.getLogger("gunicorn.access")]
    saved = [(logger.handlers[:], logger.level, logger.propagate, logger.disabled) for logger in loggers]
    loggers[0].setLevel(logging.NOTSET)
    for logger in loggers[1:]:
        # As in a fresh gunicorn process: no level, no handler of the session's own configuration.
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
    yield
    for logger, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


@pytest.mark.usefixtures("process_logging")
@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "text"])
def test_the_logging_configuration_masks_every_logger_it_sets_up(
    capsys: pytest.CaptureFixture[str], key: MintedKey, json_lines: bool
) -> None:
    """Applied as gunicorn and the app apply it: the app's loggers (made before, as imports make
    them) and gunicorn's error log write once each to stderr, the access log to stdout, each
    record one masked line, and nothing below the level."""
    app_logger = logging.getLogger("tests.configured.app")
    logging.config.dictConfig(logging_config(key_prefix=KEY_PREFIX, json_lines=json_lines, level="WARNING"))
    app_logger.warning("app sees %s", key.secret)
    app_logger.info("below the level")
    logging.getLogger("gunicorn.error").warning("error log sees %s", key.secret)
    logging.getLogger("gunicorn.access").info("access log sees %s", key.secret)
    out, err = capsys.readouterr()

    def who(lines: str) -> list[str]:
        return [
            next(name for name in ("app", "error log", "access log") if f"{name} sees" in line)
            for line in lines.splitlines()
        ]

    assert (who(err), who(out)) == (["app", "error log"], ["access log"])
    for line in (*err.splitlines(), *out.splitlines()):
        assert_masked(line, key.secret)
        if json_lines:
            assert json.loads(line)["message"].endswith(f"sees {MASK}")
        else:
            assert re.fullmatch(rf"\d\d:\d\d:\d\d (WARNING|INFO) [\w.]+: .* sees {re.escape(MASK)}", line)


@pytest.mark.usefixtures("process_logging")
def test_configure_sets_up_masked_logging_once_when_nothing_else_has(
    capsys: pytest.CaptureFixture[str], key: MintedKey
) -> None:
    """As under `flask run` or another server: the app configures logging itself, and only when
    no handler with the filter is there already (under gunicorn, its logconfig_dict did it)."""
    logging.getLogger().handlers.clear()
    configure(key_prefix=KEY_PREFIX, json_lines=True, level="WARNING")
    configure(key_prefix=KEY_PREFIX, json_lines=False, level="DEBUG")
    logging.getLogger("tests.configured.app").info("below the level")
    logging.getLogger("tests.configured.app").warning("app sees %s", key.secret)
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == f"app sees {MASK}"


@pytest.mark.usefixtures("process_logging")
def test_configure_applies_the_line_limit_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger().handlers.clear()
    configure(key_prefix=KEY_PREFIX, json_lines=True, level="WARNING", line_limit=2048)
    logging.getLogger("tests.configured.app").warning("%s", "a" * 5000)
    (line,) = capsys.readouterr().err.splitlines()
    assert 2000 < len(line) <= 2048


@pytest.mark.usefixtures("process_logging")
@pytest.mark.parametrize("app_env", ["test", "development"])
def test_an_app_served_without_gunicorn_logs_as_its_settings_say(
    make_app: Callable[..., Flask], capsys: pytest.CaptureFixture[str], key: MintedKey, app_env: str
) -> None:
    """Under `flask run` or another server the app sets up logging itself, from its settings: masked
    lines, JSON but in development, nothing below LOG_LEVEL, none longer than LOG_LINE_LIMIT."""
    logging.getLogger().handlers.clear()
    make_app(APP_ENV=app_env, LOG_LEVEL="WARNING", LOG_LINE_LIMIT="2048")
    logging.getLogger("tests.configured.app").info("below the level")
    logging.getLogger("tests.configured.app").warning("app sees %s %s", key.secret, "a" * 5000)
    err = capsys.readouterr().err
    assert "below the level" not in err
    (line,) = [line for line in err.splitlines() if "app sees" in line]
    assert_masked(line, key.secret)
    assert 2000 < len(line) <= 2048
    if app_env == "development":
        assert re.match(rf"\d\d:\d\d:\d\d WARNING tests\.configured\.app: app sees {re.escape(MASK)} a", line)
    else:
        assert json.loads(line)["message"].startswith(f"app sees {MASK} a")


def test_extra_fields_inside_containers_and_objects_keep_what_holds_no_secret(emit: Emit) -> None:
    class Shown:
        def __str__(self) -> str:
            return "shown as text"

    extra = {"headers": {"Accept": "application/json"}, "ids": ["a", "b"], "pair": (1, 2), "thing": Shown()}
    output = emit("with extras", formatter=JsonFormatter(), extra=extra)
    entry = json.loads(output)
    assert (entry["headers"], entry["ids"], entry["pair"]) == (
        {"Accept": "application/json"},
        ["a", "b"],
        [1, 2],
    )
    assert entry["thing"] == "shown as text"


@pytest.mark.parametrize("formatter", formatters(), ids=["plain", "text", "json"])
def test_credential_headers_in_extra_fields_are_masked_whatever_their_shape(
    emit: Emit, formatter: logging.Formatter
) -> None:
    """Not keys of this service: an upstream's opaque token, a session cookie. Their header
    names say what they are, in a dict as in a message."""
    headers = {
        "Authorization": "Bearer opaque.token-of-an-upstream",
        "Cookie": "session=s3ss10n-cookie-value",
        "HTTP_X_API_KEY": "an-opaque-partner-key",
        "Accept": "application/json",
    }
    output = emit("forwarding", formatter=formatter, extra={"headers": headers})
    for secret in ("opaque.token-of-an-upstream", "s3ss10n-cookie-value", "an-opaque-partner-key"):
        assert secret not in output
    if isinstance(formatter, JsonFormatter):
        assert json.loads(output)["headers"] == {
            "Authorization": MASK,
            "Cookie": MASK,
            "HTTP_X_API_KEY": MASK,
            "Accept": "application/json",
        }


def test_a_json_line_has_utc_time_level_logger_message_and_exception() -> None:
    try:
        fail_with("nothing secret")
    except ValueError:
        failed = record("failed", exc_info=sys.exc_info())
    entry = json.loads(JsonFormatter().format(failed))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"]), entry["time"]
    assert (entry["level"], entry["logger"], entry["message"]) == ("ERROR", "tests.masking", "failed")
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: cannot use nothing secret")
