"""The one place that reads the environment, so a bad configuration stops the start, not a request.

Run ``python -m {{ cookiecutter.package_name }}.settings`` to see what the service would start with
(key ids, never keys), or the one line that says why it would not start.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from limits import parse_many

from .keys import KEY_PREFIX, EntryError, KeyRing
from .proxy import parse_networks

ENVIRONMENTS = ("production", "development", "test")
STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster", "memcached")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """One line naming the variable and the problem. Never carries a secret value."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment, validated."""

    app_env: str
    keys: KeyRing
    ratelimit_storage_uri: str = "memory://"
    ratelimit_strategy: str = "fixed-window"
    ratelimit_default: str = "100 per minute"
    ratelimit_auth_failures: str = "20 per minute"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    forwarded_allow_ips: tuple[str, ...] = ()
    max_content_length: int = 64 * 1024
    items_db: str = "items.sqlite3"
    hsts_preload: bool = False
    openapi_enabled: bool = False
    log_level: str = "INFO"
    bind: str = "127.0.0.1:8443"
    workers: int = 1
    threads: int = 8

    @property
    def development(self) -> bool:
        return self.app_env == "development"

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def behind_proxy(self) -> bool:
        return bool(self.forwarded_allow_ips)

    @property
    def shared_limits(self) -> bool:
        """True when every worker and host counts against the same limits."""
        return not self.ratelimit_storage_uri.startswith("memory://")

    def describe(self) -> dict[str, object]:
        """The resolved configuration without secrets (a storage URI may hold a password)."""
        return {
            "APP_ENV": self.app_env,
            "API_KEYS": [key.describe() for key in self.keys],
            "RATELIMIT_STORAGE_URI": self.ratelimit_storage_uri.split("://", 1)[0] + "://…",
            "RATELIMIT_STRATEGY": self.ratelimit_strategy,
            "RATELIMIT_DEFAULT": self.ratelimit_default,
            "RATELIMIT_AUTH_FAILURES": self.ratelimit_auth_failures,
            "TLS_CERT_FILE": str(self.tls_cert_file) if self.tls_cert_file else None,
            "TLS_KEY_FILE": str(self.tls_key_file) if self.tls_key_file else None,
            "FORWARDED_ALLOW_IPS": list(self.forwarded_allow_ips),
            "MAX_CONTENT_LENGTH": self.max_content_length,
            "ITEMS_DB": self.items_db,
            "HSTS_PRELOAD": self.hsts_preload,
            "OPENAPI_ENABLED": self.openapi_enabled,
            "LOG_LEVEL": self.log_level,
            "BIND": self.bind,
            "WEB_CONCURRENCY": self.workers,
            "GUNICORN_THREADS": self.threads,
        }


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = env.get(name, default).strip()
    if value not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(allowed)}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, "must be a whole number") from None
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(name, "must be true or false")
    return value in ("true", "1", "yes")


def _limit(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default).strip()
    try:
        parsed = parse_many(value)
    except ValueError:
        parsed = []
    if not parsed:
        raise ConfigError(name, "is not a rate limit such as '100 per minute' or '10/second'")
    return value


def _keys(env: Mapping[str, str]) -> KeyRing:
    inline, path = env.get("API_KEYS"), env.get("API_KEYS_FILE")
    if inline is not None and path is not None:
        raise ConfigError("API_KEYS", "set API_KEYS or API_KEYS_FILE, not both")
    if path is not None:
        name = "API_KEYS_FILE"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(name, f"cannot read the file ({type(error).__name__})") from None
    elif inline is not None:
        name, text = "API_KEYS", inline
    else:
        raise ConfigError("API_KEYS", "not set: add the entry printed by 'keys new'")
    try:
        return KeyRing.from_text(KEY_PREFIX, text)
    except EntryError as error:
        raise ConfigError(name, str(error)) from None


def _storage(env: Mapping[str, str]) -> str:
    value = env.get("RATELIMIT_STORAGE_URI", "memory://").strip()
    scheme, sep, _ = value.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES:
        # The URI may hold a password: name the accepted schemes, not the value.
        raise ConfigError("RATELIMIT_STORAGE_URI", f"scheme must be one of {', '.join(STORAGE_SCHEMES)}")
    return value


def _tls(env: Mapping[str, str]) -> tuple[Path | None, Path | None]:
    cert, key = env.get("TLS_CERT_FILE"), env.get("TLS_KEY_FILE")
    if cert is None and key is None:
        return None, None
    if cert is None or key is None:
        missing = "TLS_CERT_FILE" if cert is None else "TLS_KEY_FILE"
        raise ConfigError(missing, "not set: TLS needs both TLS_CERT_FILE and TLS_KEY_FILE")
    for name, value in (("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", key)):
        try:
            Path(value).read_bytes()
        except OSError as error:
            raise ConfigError(name, f"cannot read the file ({type(error).__name__})") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError:
        raise ConfigError("TLS_KEY_FILE", "is not the private key of TLS_CERT_FILE, or not PEM") from None
    return Path(cert), Path(key)


def _proxies(env: Mapping[str, str]) -> tuple[str, ...]:
    value = env.get("FORWARDED_ALLOW_IPS", "")
    proxies = tuple(part.strip() for part in value.split(",") if part.strip())
    if "*" in proxies:
        # Trusting everyone lets any client pick its own address and scheme.
        raise ConfigError("FORWARDED_ALLOW_IPS", "'*' trusts every client; name the proxies")
    try:
        parse_networks(proxies)
    except ValueError:
        raise ConfigError(
            "FORWARDED_ALLOW_IPS", "must be IP addresses or networks, comma-separated"
        ) from None
    return proxies


def settings_from(env: Mapping[str, str], cpu_count: int = 1) -> Settings:
    """Build and validate settings from a mapping (the environment, or a test's dict)."""
    app_env = _choice(env, "APP_ENV", ENVIRONMENTS, "production")
    keys = _keys(env)
    storage = _storage(env)
    cert, key = _tls(env)
    proxies = _proxies(env)
    if cert is None and not proxies and app_env == "production":
        # Plain HTTP would carry keys in cleartext; redirecting would hide that it happened.
        raise ConfigError(
            "TLS_CERT_FILE",
            "not set: serve HTTPS with TLS_CERT_FILE and TLS_KEY_FILE, "
            "or name the TLS-terminating proxies in FORWARDED_ALLOW_IPS",
        )
    # In-memory limits are per process: more than one worker would multiply every limit.
    default_workers = 1 if storage.startswith("memory://") else min(2 * cpu_count + 1, 9)
    return Settings(
        app_env=app_env,
        keys=keys,
        ratelimit_storage_uri=storage,
        ratelimit_strategy=_choice(env, "RATELIMIT_STRATEGY", STRATEGIES, "fixed-window"),
        ratelimit_default=_limit(env, "RATELIMIT_DEFAULT", "100 per minute"),
        ratelimit_auth_failures=_limit(env, "RATELIMIT_AUTH_FAILURES", "20 per minute"),
        tls_cert_file=cert,
        tls_key_file=key,
        forwarded_allow_ips=proxies,
        max_content_length=_integer(env, "MAX_CONTENT_LENGTH", 64 * 1024, 1, 1 << 30),
        items_db=env.get("ITEMS_DB", "items.sqlite3"),
        hsts_preload=_flag(env, "HSTS_PRELOAD"),
        # The document maps every route and error: handy in development, an attack map elsewhere.
        openapi_enabled=_flag(env, "OPENAPI_ENABLED", default=app_env == "development"),
        log_level=_choice(env, "LOG_LEVEL", LOG_LEVELS, "INFO"),
        bind=env.get("BIND", "127.0.0.1:8443"),
        workers=_integer(env, "WEB_CONCURRENCY", default_workers, 1, 64),
        threads=_integer(env, "GUNICORN_THREADS", 8, 1, 256),
    )


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse (in production) or warn about limits that each worker would count alone."""
    if workers > 1 and not settings.shared_limits:
        problem = (
            f"memory:// with {workers} workers multiplies every rate limit by {workers}; "
            "use redis:// or one worker"
        )
        if settings.app_env == "production":
            raise ConfigError("RATELIMIT_STORAGE_URI", problem)
        print(f"warning: RATELIMIT_STORAGE_URI: {problem}", file=sys.stderr)


def load_settings() -> Settings:
    """Settings from the process environment; ``.env`` only when APP_ENV=development.

    The real environment decides: a ``.env`` file left on a production host is never read,
    and values from the real environment win over ``.env``.
    """
    if os.environ.get("APP_ENV") == "development":
        from dotenv import load_dotenv

        load_dotenv(".env", override=False)
    return settings_from(os.environ, cpu_count=os.cpu_count() or 1)


# The settings this process serves with. The gunicorn master sets them when it reads its
# configuration; workers are forked from it and inherit them, so every worker serves exactly
# what the master validated, and a reload that fails validation changes nothing.
_serving: Settings | None = None


def serving_settings() -> Settings:
    """The settings in force: those the gunicorn master validated, else the environment's."""
    global _serving
    if _serving is None:
        _serving = load_settings()
    return _serving


def reload_settings() -> tuple[Settings, ConfigError | None]:
    """Read the environment again (gunicorn start and SIGHUP).

    At start a bad configuration raises. On a reload it returns the settings already in
    force with the error, so the service keeps serving the last configuration that worked.
    """
    global _serving
    try:
        fresh = load_settings()
        check_workers(fresh, fresh.workers)
    except ConfigError as error:
        if _serving is None:
            raise
        return _serving, error
    _serving = fresh
    return fresh, None


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(settings.describe(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
