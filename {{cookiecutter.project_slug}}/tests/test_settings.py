"""Configuration: every bad value stops the start with one line naming the variable."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.database import DatabaseSettings
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint
from {{ cookiecutter.package_name }}.serving import check_workers
from {{ cookiecutter.package_name }}.settings import ConfigError, Settings, load_settings, settings_from

from .support import KeySet


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


def test_unknown_storage_scheme_is_refused_without_echoing_the_uri(env: dict[str, str]) -> None:
    env["RATELIMIT_STORAGE_URI"] = "mongodb://user:hunter2@db/limits"
    error = refused(env)
    assert error.variable == "RATELIMIT_STORAGE_URI"
    assert "hunter2" not in str(error)


@pytest.mark.parametrize("password", ["hun#ter2", "hun/ter2", "hun?ter2", "hunter2#/?"])
def test_a_storage_password_that_would_be_misread_stops_the_start_unechoed(
    env: dict[str, str], password: str
) -> None:
    env["RATELIMIT_STORAGE_URI"] = f"redis://:{password}@localhost:6379/0"
    error = refused(env)
    assert error.variable == "RATELIMIT_STORAGE_URI"
    assert "percent-encode" in str(error)
    for piece in ("hun", "ter2"):
        assert piece not in str(error)


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
    error = refused(env)
    assert error.variable == "TLS_CERT_FILE"
    assert "FORWARDED_ALLOW_IPS" in str(error)


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
    ],
)
def test_untrustworthy_proxy_lists_are_refused(env: dict[str, str], value: str) -> None:
    env["FORWARDED_ALLOW_IPS"] = value
    assert refused(env).variable == "FORWARDED_ALLOW_IPS"


def test_tls_needs_both_files(env: dict[str, str], tls_files: tuple[Path, Path]) -> None:
    env["TLS_CERT_FILE"] = str(tls_files[0])
    assert refused(env).variable == "TLS_KEY_FILE"


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
    assert refused(env).variable == "TLS_KEY_FILE"


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


def test_real_environment_wins_over_dot_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: KeySet, database_env: dict[str, str]
) -> None:
    (tmp_path / ".env").write_text(f"API_KEYS={keys.writer.entry}\n")
    monkeypatch.chdir(tmp_path)
    for name, value in database_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("API_KEYS", keys.reader.entry)
    monkeypatch.delenv("API_KEYS_FILE", raising=False)
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
