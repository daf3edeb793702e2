"""Configuration: every bad value stops the start with one line naming the variable."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import ipaddress
import json
import locale
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.database_settings import DatabaseSettings
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, format_expiry, mint
from {{ cookiecutter.package_name }}.serving import check_workers
from {{ cookiecutter.package_name }}.settings import (
    MOST_WORKERS,
    ConfigError,
    Invalid,
    Settings,
    choice,
    cpu_quota,
    database_settings_from,
    flag,
    key_max_lifetime_days,
    load_database_settings,
    load_key_ring,
    load_settings,
    read,
    settings_from,
    usable_cpus,
    whole,
)
from {{ cookiecutter.package_name }}.settings import main as settings_main

from .support import PROJECT, KeySet, Server


def refused(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        settings_from(env)
    assert "\n" not in str(error.value)
    return error.value


def test_valid_environment_builds_settings(env: dict[str, str]) -> None:
    settings = settings_from(env)
    assert len(settings.keys) == 5
    assert settings.ratelimit_storage_uri == "memory://"
    assert settings.workers == 1


def test_missing_keys_stop_the_start(env: dict[str, str]) -> None:
    del env["API_KEYS"]
    assert refused(env).variable == "API_KEYS"


def test_empty_keys_stop_the_start(env: dict[str, str]) -> None:
    env["API_KEYS"] = " , "
    assert str(refused(env)) == "API_KEYS: holds no entries"


def test_raw_key_in_api_keys_is_named_by_position_never_echoed(env: dict[str, str], keys: KeySet) -> None:
    env["API_KEYS"] = f"{keys.reader.entry},{keys.writer.secret}"
    error = refused(env)
    assert str(error) == "API_KEYS: entry 2 is a raw key: configure its entry, not the key"
    assert keys.writer.secret not in str(error)


def test_placeholder_from_env_example_stops_the_start(env: dict[str, str]) -> None:
    example = (Path(__file__).parents[1] / ".env.example").read_text()
    env["API_KEYS"] = next(line for line in example.splitlines() if line.startswith("API_KEYS="))[9:]
    assert "placeholder" in str(refused(env))


def test_keys_file_is_read(env: dict[str, str], keys: KeySet, tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-11\n{keys.reader.entry}\n{keys.writer.entry}\n")
    del env["API_KEYS"]
    env["API_KEYS_FILE"] = str(path)
    assert [k.key_id for k in settings_from(env).keys] == ["reader", "writer"]


def test_unreadable_keys_file_is_named(env: dict[str, str], tmp_path: Path) -> None:
    del env["API_KEYS"]
    env["API_KEYS_FILE"] = str(tmp_path / "missing")
    assert str(refused(env)) == "API_KEYS_FILE: cannot read the file (FileNotFoundError)"


def test_a_secrets_file_is_read_as_utf8_whatever_the_hosts_locale(
    env: dict[str, str], keys: KeySet, tmp_path: Path
) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated by Zoë\n{keys.reader.entry}\n", encoding="utf-8")
    del env["API_KEYS"]
    env["API_KEYS_FILE"] = str(path)
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # a host whose locale reads ASCII only
    try:
        read = [k.key_id for k in settings_from(env).keys]
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert read == ["reader"]


def test_both_key_sources_are_refused(env: dict[str, str], tmp_path: Path) -> None:
    env["API_KEYS_FILE"] = str(tmp_path / "keys")
    assert "not both" in str(refused(env))


@pytest.mark.parametrize("variable", ["RATELIMIT_DEFAULT", "RATELIMIT_AUTH_FAILURES"])
@pytest.mark.parametrize("value", ["lots", "10 per fortnight", "", "1 per 0 second", "0 per minute"])
def test_invalid_limit_stops_the_start(env: dict[str, str], variable: str, value: str) -> None:
    env[variable] = value
    assert refused(env).variable == variable


def test_a_zero_window_is_refused_because_it_would_lock_callers_out(env: dict[str, str]) -> None:
    env["RATELIMIT_DEFAULT"] = "1 per 0 second"
    assert "at least one second" in str(refused(env))


@pytest.mark.parametrize("scheme", ["mongodb", "memcached"])
def test_unknown_storage_scheme_is_refused_without_echoing_the_uri(env: dict[str, str], scheme: str) -> None:
    """memcached too: limits knows it, but its client is not installed, so it would fail later."""
    env["RATELIMIT_STORAGE_URI"] = f"{scheme}://user:hunter2@db/limits"
    error = refused(env)
    assert error.variable == "RATELIMIT_STORAGE_URI"
    assert "hunter2" not in str(error)


@pytest.mark.parametrize("password", ["hun#ter2", "hun/ter2", "hun?ter2", "hunter2#/?", "hun[ter2"])
def test_a_storage_password_that_would_be_misread_stops_the_start_unechoed(
    env: dict[str, str], password: str
) -> None:
    env["RATELIMIT_STORAGE_URI"] = f"redis://:{password}@localhost:6379/0"
    error = refused(env)
    assert error.variable == "RATELIMIT_STORAGE_URI"
    assert "percent-encode" in str(error)
    for piece in ("hun", "ter2"):
        assert piece not in str(error)


@pytest.mark.parametrize(
    ("uri", "accepted"),
    [
        ("redis://localhost/0", True),
        ("redis://localhost:1/0", True),
        ("redis://localhost:65535/0", True),
        ("redis://localhost:0/0", False),
        ("redis://localhost:65536/0", False),
        ("redis://localhost:63791x/0", False),
        ("redis://:hunter2@:6379/0", False),
        ("redis://user:1234#5678@cache:6379/0", False),
    ],
    ids=["no-port", "port-1", "port-65535", "port-0", "port-65536", "port-letters", "no-host", "fragment"],
)
def test_a_storage_uri_must_name_a_host_and_a_port_its_client_can_reach(
    env: dict[str, str], uri: str, accepted: bool
) -> None:
    env["RATELIMIT_STORAGE_URI"] = uri
    if accepted:
        assert settings_from(env).ratelimit_storage_uri == uri
    else:
        assert refused(env).variable == "RATELIMIT_STORAGE_URI"


def test_a_percent_encoded_storage_password_is_accepted(env: dict[str, str]) -> None:
    env["RATELIMIT_STORAGE_URI"] = "redis://:hun%23ter%2F2%3F@localhost:6379/0"
    assert settings_from(env).shared_limits


def test_the_storage_uri_may_come_from_a_file(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "storage"
    path.write_text("redis://:hunter2@localhost:6379/0\n")
    env["RATELIMIT_STORAGE_URI_FILE"] = str(path)
    settings = settings_from(env)
    assert settings.ratelimit_storage_uri == "redis://:hunter2@localhost:6379/0"
    assert "hunter2" not in str(settings.describe())


def test_production_without_tls_or_proxy_refuses_plain_http(env: dict[str, str]) -> None:
    env["APP_ENV"] = "production"
    assert str(refused(env)) == (
        "TLS_CERT_FILE: not set: serve HTTPS with TLS_CERT_FILE and TLS_KEY_FILE, "
        "or name the TLS-terminating proxies in FORWARDED_ALLOW_IPS"
    )


def test_production_behind_a_named_proxy_may_serve_plain_http(env: dict[str, str]) -> None:
    env.update(APP_ENV="production", FORWARDED_ALLOW_IPS="10.0.0.5, 10.1.0.0/16")
    assert settings_from(env).forwarded_allow_ips == (
        ipaddress.ip_network("10.0.0.5"),
        ipaddress.ip_network("10.1.0.0/16"),
    )


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "proxy.internal",
        "10.0.0.300",
        "0.0.0.0/0",
        "::/0",
        "10.0.0.5, 0.0.0.0/0",
        "10.0.0.5,::/0",
        "0.0.0.0/1, 128.0.0.0/1",
        "::ffff:0:0/96",
        "::/1, 8000::/1",
        "::ffff:0:0/97, ::ffff:8000:0/97",
        "0.0.0.0/1, ::ffff:8000:0/97",
        "::ffff:0:0/97, 128.0.0.0/1",
        "64:ff9b::/96",
        "64:ff9b::/97, 128.0.0.0/1",
        "::/64",
        "0.0.0.0/2, 64.0.0.0/2, ::ffff:8000:0/98, 64:ff9b::c000:0/98",
    ],
)
def test_untrustworthy_proxy_lists_are_refused(env: dict[str, str], value: str) -> None:
    """Halves, quarters and spellings that add up to every client (IPv4 as mapped IPv6 on a
    dual-stack socket, or through NAT64) trust every client to name its own address."""
    env["FORWARDED_ALLOW_IPS"] = value
    assert refused(env).variable == "FORWARDED_ALLOW_IPS"


@pytest.mark.parametrize(
    "value",
    ["10.0.0.5", "::ffff:10.0.0.5", "64:ff9b::a00:5/128", "10.0.0.0/8, ::ffff:10.0.0.0/104", "2001:db8::/32"],
)
def test_proxy_lists_that_name_some_addresses_are_accepted(env: dict[str, str], value: str) -> None:
    assert settings_from({**env, "FORWARDED_ALLOW_IPS": value}).forwarded_allow_ips


def test_a_star_for_the_proxies_is_refused_saying_it_would_trust_every_client(env: dict[str, str]) -> None:
    env["FORWARDED_ALLOW_IPS"] = "10.0.0.5, *"
    assert str(refused(env)) == "FORWARDED_ALLOW_IPS: '*' trusts every client; name the proxies"


def test_tls_needs_both_files(env: dict[str, str], tls_files: tuple[Path, Path]) -> None:
    env["TLS_CERT_FILE"] = str(tls_files[0])
    assert str(refused(env)) == "TLS_KEY_FILE: not set: TLS needs both TLS_CERT_FILE and TLS_KEY_FILE"


def test_unreadable_certificate_is_named(
    env: dict[str, str], tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    env.update(TLS_CERT_FILE=str(tmp_path / "nope.pem"), TLS_KEY_FILE=str(tls_files[1]))
    assert str(refused(env)) == "TLS_CERT_FILE: cannot read the file (FileNotFoundError)"


def test_mismatched_certificate_and_key_are_refused(
    env: dict[str, str], tls_files: tuple[Path, Path], ca, tmp_path: Path
) -> None:
    other = ca.issue_cert("localhost")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    env.update(TLS_CERT_FILE=str(tls_files[0]), TLS_KEY_FILE=str(other_key))
    assert str(refused(env)) == "TLS_KEY_FILE: is not the private key of TLS_CERT_FILE, or not PEM"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAX_CONTENT_LENGTH", "big"),
        ("MAX_CONTENT_LENGTH", "0"),
        ("WEB_CONCURRENCY", "-1"),
        ("APP_ENV", "staging"),
        ("LOG_LEVEL", "LOUD"),
        ("HSTS_PRELOAD", "maybe"),
        ("RATELIMIT_STRATEGY", "leaky"),
    ],
)
def test_malformed_values_are_named(env: dict[str, str], variable: str, value: str) -> None:
    env[variable] = value
    assert refused(env).variable == variable


def test_redis_storage_defaults_to_one_worker_per_cpu(env: dict[str, str]) -> None:
    env["RATELIMIT_STORAGE_URI"] = "redis://localhost:6379/0"
    assert settings_from(env, cpu_count=2).workers == 2
    assert settings_from(env, cpu_count=32).workers == 8


def test_memory_limits_with_several_workers_are_refused_in_production(
    env: dict[str, str], tls_files: tuple[Path, Path]
) -> None:
    env.update(APP_ENV="production", TLS_CERT_FILE=str(tls_files[0]), TLS_KEY_FILE=str(tls_files[1]))
    with pytest.raises(ConfigError, match="multiplies every rate limit by 4"):
        check_workers(settings_from(env), 4)


def test_memory_limits_with_several_workers_only_warn_outside_production(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    check_workers(settings_from(env), 3)
    assert "warning: RATELIMIT_STORAGE_URI" in capsys.readouterr().err


def test_describe_shows_key_ids_but_no_secret_or_storage_password(env: dict[str, str], keys: KeySet) -> None:
    env["RATELIMIT_STORAGE_URI"] = "redis://:hunter2@localhost:6379/0"
    described = str(settings_from(env).describe())
    assert "reader" in described
    assert "hunter2" not in described
    assert keys.reader.entry.split("sha256=")[1] not in described


def test_describe_names_every_variable_of_the_table_once(env: dict[str, str]) -> None:
    tables = (Settings, DatabaseSettings)
    names = [
        f.metadata["variable"].name for t in tables for f in dataclasses.fields(t) if f.name != "database"
    ]
    assert len(names) == len(set(names))
    assert list(settings_from(env).describe()) == names


def test_dot_env_is_read_only_in_development(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: KeySet, database_env: dict[str, str]
) -> None:
    minted = mint(KEY_PREFIX, key_id="from-dotenv", scopes=["a:b"])
    database = "".join(f"{name}={value}\n" for name, value in database_env.items())
    (tmp_path / ".env").write_text(f"API_KEYS={minted.entry}\n{database}")
    monkeypatch.chdir(tmp_path)
    for name in ("API_KEYS", "API_KEYS_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE", *database_env):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APP_ENV", "production")
    with pytest.raises(ConfigError, match="API_KEYS: not set"):
        load_settings()
    monkeypatch.setenv("APP_ENV", "development")
    assert [k.key_id for k in load_settings().keys] == ["from-dotenv"]


def test_migrations_read_the_database_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, database_env: dict[str, str]
) -> None:
    monkeypatch.setenv("APP_ENV", "test")
    for name, value in database_env.items():
        monkeypatch.setenv(name, value)
    assert load_database_settings() == database_settings_from(database_env)


def in_development(
    monkeypatch: pytest.MonkeyPatch, directory: Path, database_env: dict[str, str], api_keys: str
) -> None:
    """The process's own environment, as `make run` gives it, run from ``directory``."""
    monkeypatch.chdir(directory)
    for name, value in database_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("API_KEYS", api_keys)
    monkeypatch.delenv("API_KEYS_FILE", raising=False)


def test_real_environment_wins_over_dot_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: KeySet, database_env: dict[str, str]
) -> None:
    (tmp_path / ".env").write_text(f"API_KEYS={keys.writer.entry}\n")
    in_development(monkeypatch, tmp_path, database_env, keys.reader.entry)
    assert [k.key_id for k in load_settings().keys] == ["reader"]


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("limit", "0 per minute", "limit needs at least one request per window of at least one second"),
        ("limit", "9 per 0 seconds", "limit needs at least one request per window of at least one second"),
        ("limit", "plenty", "limit must be a rate limit"),
        ("nets", "192.0.2.1/24", "nets must be networks"),
        ("nets", "intranet", "nets must be networks"),
    ],
    ids=["zero-amount", "zero-window", "words", "host-bits", "name"],
)
def test_a_bad_limit_or_networks_stops_the_start_naming_the_entry_by_position(
    env: dict[str, str], keys: KeySet, field: str, value: str, problem: str
) -> None:
    bad = keys.writer.entry.replace(";sha256", f";{field}={value};sha256")
    env["API_KEYS"] = f"{keys.reader.entry}\n{bad}"
    error = refused(env)
    assert str(error).startswith(f"API_KEYS: entry 2 {problem}")
    assert value not in str(error)
    assert "writer" not in str(error)


def test_keys_with_limits_networks_and_instants_are_described_without_secrets(
    env: dict[str, str], keys: KeySet
) -> None:
    full = mint(
        KEY_PREFIX,
        key_id="full",
        scopes=["a:b"],
        expires=dt.datetime(2031, 1, 1, 9, 30, tzinfo=dt.UTC),
        limit="10/second",
        nets=[ipaddress.ip_network("192.0.2.0/24")],
    )
    env["API_KEYS"] = full.entry
    (described,) = settings_from(env).describe()["API_KEYS"]
    assert described == {
        "id": "full",
        "tenant": "default",
        "scopes": ["a:b"],
        "expires": "2031-01-01T09:30Z",
        "limit": "10/second",
        "nets": ["192.0.2.0/24"],
    }


def test_a_choice_accepts_exactly_its_values() -> None:
    parse = choice("fixed-window", "moving-window")
    assert [parse("fixed-window"), parse("moving-window")] == ["fixed-window", "moving-window"]
    for text in ("", "Fixed-Window", "fixed-window "):
        with pytest.raises(Invalid, match="must be one of fixed-window, moving-window"):
            parse(text)


def test_a_whole_number_is_accepted_up_to_both_bounds_and_no_further() -> None:
    parse = whole(1, 64)
    assert [parse("1"), parse("64")] == [1, 64]
    for text in ("0", "65", "-1", "1.5", "one"):
        with pytest.raises(Invalid):
            parse(text)


def test_a_field_declares_its_variable_once() -> None:
    declared = read("NAME", str, "fallback", missing="not set", from_file=True)["variable"]
    assert (declared.name, declared.parse, declared.default) == ("NAME", str, "fallback")
    assert (declared.missing, declared.from_file) == ("not set", True)


def test_describe_shows_what_the_service_starts_with(
    env: dict[str, str], tls_files: tuple[Path, Path]
) -> None:
    assert settings_from(env).describe()["TLS_CERT_FILE"] is None
    cert, key = (str(path) for path in tls_files)
    env.update(FORWARDED_ALLOW_IPS="10.0.0.1, 2001:db8::/32", TLS_CERT_FILE=cert, TLS_KEY_FILE=key)
    described = settings_from(env).describe()
    assert described["FORWARDED_ALLOW_IPS"] == ["10.0.0.1/32", "2001:db8::/32"]
    assert (described["TLS_CERT_FILE"], described["TLS_KEY_FILE"]) == (cert, key)
    assert described["RATELIMIT_STORAGE_URI"] == "memory://"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("redis://:hunter2@localhost:6379/0", "redis://***@localhost:6379/0"),
        ("redis://user:hunter2@localhost:6379/0", "redis://***@localhost:6379/0"),
        ("redis://:hun@ter2@localhost:6379/0", "redis://***@localhost:6379/0"),
        ("redis://:hunter2@localhost:6379/0?note=a://b", "redis://***@localhost:6379/0?note=a://b"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ],
    ids=["password", "user-and-password", "at-in-password", "scheme-in-query", "no-credentials"],
)
def test_describe_hides_the_storage_credentials_and_nothing_else(
    env: dict[str, str], uri: str, shown: str
) -> None:
    env["RATELIMIT_STORAGE_URI"] = uri
    assert settings_from(env).describe()["RATELIMIT_STORAGE_URI"] == shown


@pytest.fixture
def one_cpu() -> Iterator[None]:
    """This process confined to one of its CPUs (as ``taskset`` or a container's cpuset would)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    yield
    os.sched_setaffinity(0, allowed)


def test_the_environment_sizes_redis_backed_workers_by_the_cpus_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], one_cpu: None
) -> None:
    for name, value in {**env, "RATELIMIT_STORAGE_URI": "redis://localhost:6379/0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert usable_cpus() == 1
    assert load_settings().workers == 1


CgroupFiles = Callable[[dict[str, str]], Path]
V2 = "cpu.max"
V1_QUOTA, V1_PERIOD = "cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"


@pytest.fixture
def cgroup(tmp_path: Path) -> CgroupFiles:
    """A cgroup directory holding the given files, by their paths in it."""

    def make(files: dict[str, str]) -> Path:
        for name, text in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
        return tmp_path

    return make


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({V2: "max 100000\n"}, None),
        ({V2: "200000 100000\n"}, 2),
        ({V2: "150000 100000\n"}, 2),
        ({V2: "100000 100000\n"}, 1),
        ({V2: "50000 100000\n"}, 1),
        ({V1_QUOTA: "300000\n", V1_PERIOD: "100000\n"}, 3),
        ({V1_QUOTA: "250000\n", V1_PERIOD: "100000\n"}, 3),
        ({V1_QUOTA: "-1\n", V1_PERIOD: "100000\n"}, None),
        ({V2: "max 100000\n", V1_QUOTA: "100000\n", V1_PERIOD: "100000\n"}, None),
        ({V2: "0 100000\n"}, None),
        ({V2: "100000 0\n"}, None),
        ({V2: "a few cpus, say\n"}, None),
        ({V1_QUOTA: "100000\n"}, None),
        ({}, None),
    ],
    ids=[
        "v2-unlimited",
        "v2-two",
        "v2-one-and-a-half-rounds-up",
        "v2-one",
        "v2-half-is-one",
        "v1-three",
        "v1-two-and-a-half-rounds-up",
        "v1-unlimited",
        "v2-wins-over-v1",
        "v2-zero-quota-ignored",
        "v2-zero-period-ignored",
        "v2-unreadable-ignored",
        "v1-without-period-ignored",
        "no-cgroup-files",
    ],
)
def test_the_cgroup_cpu_quota_is_read_in_whole_cpus_rounded_up(
    cgroup: CgroupFiles, files: dict[str, str], cpus: int | None
) -> None:
    assert cpu_quota(cgroup(files)) == cpus


def test_usable_cpus_are_the_affinity_bounded_by_the_quota_and_never_none(cgroup: CgroupFiles) -> None:
    allowed = len(os.sched_getaffinity(0))
    assert usable_cpus(cgroup({})) == allowed
    assert usable_cpus(cgroup({V2: "50000 100000"})) == 1
    assert usable_cpus(cgroup({V2: f"{(allowed + 5) * 100000} 100000"})) == allowed
    assert usable_cpus(cgroup({V2: "1 100000"})) == 1


def test_usable_cpus_follow_a_narrowed_affinity(cgroup: CgroupFiles, one_cpu: None) -> None:
    assert usable_cpus(cgroup({V2: "max 100000"})) == 1


def test_make_settings_prints_the_configuration_or_the_one_line_that_stops_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], keys: KeySet
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("API_KEYS_FILE", raising=False)
    assert settings_main() == 0
    out = capsys.readouterr().out
    assert out.startswith('{\n  "APP_ENV": "test",\n'), "indented for a person to read"
    shown = json.loads(out)
    assert [key["id"] for key in shown["API_KEYS"]] == ["expired", "other", "plain", "reader", "writer"]
    monkeypatch.setenv("RATELIMIT_DEFAULT", "plenty")
    assert settings_main() == 1
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "error: RATELIMIT_DEFAULT: is not a rate limit such as '100 per minute' or '10/second'\n",
    )


@pytest.mark.parametrize(
    ("text", "value"), [("yes", True), ("no", False), ("1", True), ("0", False), ("TRUE", True)]
)
def test_a_flag_reads_the_usual_spellings(text: str, value: bool) -> None:
    assert flag(text) is value


def test_the_openapi_document_is_served_by_default_only_in_development(env: dict[str, str]) -> None:
    assert settings_from(env).openapi_enabled is False
    assert settings_from({**env, "APP_ENV": "development"}).openapi_enabled is True


def test_a_proxy_network_may_be_written_with_host_bits(env: dict[str, str]) -> None:
    assert settings_from({**env, "FORWARDED_ALLOW_IPS": "10.0.0.5/8"}).forwarded_allow_ips == (
        ipaddress.ip_network("10.0.0.0/8"),
    )


@pytest.mark.parametrize(
    ("uri", "accepted"),
    [
        ("redis://localhost:6379/1", True),
        ("rediss://localhost:6379/2", True),
        ("redis://localhost:6379/cache", False),
        ("rediss://localhost:6379/cache", False),
        ("redis://localhost:6379/1X", False),
        ("redis+sentinel://localhost:26379/mymaster", True),
    ],
)
def test_a_redis_database_must_be_a_number(env: dict[str, str], uri: str, accepted: bool) -> None:
    env["RATELIMIT_STORAGE_URI"] = uri
    if accepted:
        assert settings_from(env).ratelimit_storage_uri == uri
    else:
        assert refused(env).variable == "RATELIMIT_STORAGE_URI"


def test_both_sources_of_one_variable_name_it(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "uri").write_text("memory://")
    env.update(RATELIMIT_STORAGE_URI="memory://", RATELIMIT_STORAGE_URI_FILE=str(tmp_path / "uri"))
    assert refused(env).variable == "RATELIMIT_STORAGE_URI"


def test_a_key_file_without_its_certificate_names_the_certificate(
    env: dict[str, str], tls_files: tuple[Path, Path]
) -> None:
    env["TLS_KEY_FILE"] = str(tls_files[1])
    assert refused(env).variable == "TLS_CERT_FILE"


def test_memory_limits_default_to_one_worker_whatever_the_cpus(env: dict[str, str]) -> None:
    assert settings_from(env, cpu_count=4).workers == 1
    assert settings_from({**env, "RATELIMIT_STORAGE_URI": "redis://localhost:6379/0"}).workers == 1


def test_only_secrets_may_come_from_a_file(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "env").write_text("development")
    assert settings_from({**env, "APP_ENV_FILE": str(tmp_path / "env")}).app_env == "test"


# --- KEY_MAX_LIFETIME_DAYS -----------------------------------------------------------------------


def lifetime_env(env: dict[str, str], *minted: MintedKey, days: str | None = "90") -> dict[str, str]:
    entries = ",".join(m.entry for m in minted)
    return {**env, "API_KEYS": entries, **({} if days is None else {"KEY_MAX_LIFETIME_DAYS": days})}


def expiring(key_id: str, days: float) -> MintedKey:
    return mint(
        KEY_PREFIX, key_id=key_id, scopes=["a:b"], expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    )


def test_without_a_maximum_lifetime_a_key_may_never_expire(env: dict[str, str]) -> None:
    lasting = mint(KEY_PREFIX, key_id="ci", scopes=["a:b"])
    settings = settings_from(lifetime_env(env, lasting, days=None))
    assert settings.key_max_lifetime_days is None
    assert settings.describe()["KEY_MAX_LIFETIME_DAYS"] is None


def test_under_a_maximum_lifetime_a_key_without_expiry_stops_the_start_naming_its_id(
    env: dict[str, str],
) -> None:
    error = refused(lifetime_env(env, expiring("soon", 30), mint(KEY_PREFIX, key_id="ci", scopes=["a:b"])))
    assert str(error) == (
        "KEY_MAX_LIFETIME_DAYS: entry 'ci' has no expiry; give it one at most 90 days ahead "
        "('keys roll' does)"
    )


def test_under_a_maximum_lifetime_a_key_expiring_later_stops_the_start_naming_its_id(
    env: dict[str, str],
) -> None:
    far = expiring("far", 92)
    error = refused(lifetime_env(env, expiring("soon", 30), far))
    assert far.key.expires is not None
    expires = format_expiry(far.key.expires)
    assert str(error) == f"KEY_MAX_LIFETIME_DAYS: entry 'far' expires {expires}, more than 90 days ahead"


def test_under_a_maximum_lifetime_keys_expiring_within_it_or_already_expired_start(
    env: dict[str, str],
) -> None:
    lapsed = mint(KEY_PREFIX, key_id="lapsed", scopes=["a:b"], expires=dt.date(2020, 1, 1))
    settings = settings_from(lifetime_env(env, expiring("soon", 89), lapsed))
    assert settings.key_max_lifetime_days == 90
    assert [key.key_id for key in settings.keys] == ["lapsed", "soon"]


@pytest.mark.parametrize("value", ["0", "-1", "ninety", "3651", "1.5"])
def test_a_malformed_maximum_lifetime_is_named(env: dict[str, str], value: str) -> None:
    error = refused(lifetime_env(env, expiring("soon", 1), days=value))
    assert error.variable == "KEY_MAX_LIFETIME_DAYS"


def test_the_keys_command_reads_the_configured_keys_by_the_services_rules(
    monkeypatch: pytest.MonkeyPatch, keys: KeySet
) -> None:
    """What `keys revoke` and `keys report` check ids against: API_KEYS alone, parsed as the
    service parses it, and refused as the service refuses it."""
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.delenv("API_KEYS_FILE", raising=False)
    monkeypatch.setenv("API_KEYS", f"{keys.reader.entry}\n{keys.writer.entry}")
    assert {key.key_id for key in load_key_ring()} == {keys.reader.key.key_id, keys.writer.key.key_id}
    monkeypatch.setenv("API_KEYS", keys.reader.secret)
    with pytest.raises(ConfigError, match=r"^API_KEYS: "):
        load_key_ring()


def test_the_keys_command_reads_the_maximum_lifetime_by_the_services_rules(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("KEY_MAX_LIFETIME_DAYS=30\n")
    monkeypatch.delenv("KEY_MAX_LIFETIME_DAYS", raising=False)
    monkeypatch.setenv("APP_ENV", "production")
    assert key_max_lifetime_days() is None
    monkeypatch.setenv("KEY_MAX_LIFETIME_DAYS", " 45 ")
    assert key_max_lifetime_days() == 45
    monkeypatch.setenv("KEY_MAX_LIFETIME_DAYS", "soon")
    with pytest.raises(ConfigError, match=r"^KEY_MAX_LIFETIME_DAYS: must be a whole number$"):
        key_max_lifetime_days()
    monkeypatch.delenv("KEY_MAX_LIFETIME_DAYS")
    monkeypatch.setenv("APP_ENV", "development")
    assert key_max_lifetime_days() == 30


def package_imports(module: str) -> set[str]:
    """The modules of this package that ``module`` imports, lazily or for typing included."""
    tree = ast.parse((PROJECT / "src" / "{{ cookiecutter.package_name }}" / f"{module}.py").read_text())
    return {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
    }


def test_the_settings_tables_import_nothing_that_imports_them_back() -> None:
    # The service's table, the database's and their machinery form no circle: settings.py reads
    # the environment, database.py uses the result, and never the other way round.
    assert package_imports("settings") == {"database_settings", "keys", "variables"}
    assert package_imports("database_settings") == {"variables"}
    assert package_imports("variables") == set()
    assert "settings" in package_imports("database")


@pytest.mark.slow
def test_gunicorn_says_at_each_start_that_app_env_test_is_for_tests_only(
    start_server: Callable[..., Server],
) -> None:
    def warnings(server: Server) -> list[str]:
        return [line for line in server.logs().splitlines() if line.startswith("warning: APP_ENV:")]

    assert len(warnings(start_server())) == 1
    assert warnings(start_server(APP_ENV="production")) == []


def test_the_services_default_workers_count_the_cpus_it_may_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: KeySet, database_env: dict[str, str]
) -> None:
    """With limits shared on Redis, a worker per CPU the process may use (its affinity, under its
    cgroup's quota), as gunicorn reads the settings: not one, and not the host's count."""
    in_development(monkeypatch, tmp_path, database_env, keys.reader.entry)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", "redis://127.0.0.1:6379/0")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    usable = usable_cpus()
    assert usable > 1, "this test needs a CPU quota of two CPUs or more to tell the count from one"
    assert load_settings().workers == min(usable, MOST_WORKERS)
