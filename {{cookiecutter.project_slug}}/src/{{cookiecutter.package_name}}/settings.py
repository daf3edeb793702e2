"""The one place that reads the environment, so a bad configuration stops the start, not a request.

Each variable is declared once, as a field of :class:`Settings` (the database's, of the
``DatabaseSettings`` table in ``database_settings.py``): its name, its default and its parser. Errors
name the variable and the problem, never the value, which may be a secret.
Run ``python -m {{ cookiecutter.package_name }}.settings`` to see what the service would start
with (key ids, never keys), or the one line that says why it would not start.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import os
import re
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from limits import RateLimitItem, parse_many

from .database_settings import DatabaseSettings
from .keys import KEY_PREFIX, EntryError, KeyRing, format_expiry
from .variables import UNPARSABLE_URI, Variable, choice, flag, read, redacted_uri, whole

# The errors every entry point catches to print its one line, importable from the settings.
from .variables import ConfigError as ConfigError
from .variables import Invalid as Invalid

ENVIRONMENTS = ("production", "development", "test")
STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The default storage: counters in each process's memory, shared by nothing else.
PER_PROCESS_STORAGE = "memory://"
# The storages whose client this project installs (redis-py); memcached would need another.
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster")
ZERO_WINDOW = re.compile(r"(?:\bper|/)\s*0+\s*[a-z]", re.IGNORECASE)
NO_KEYS = "not set: add the entry printed by 'keys new'"
# prometheus_client's own variable: the library reads it too, when it is first imported.
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Read by `keys new` and `keys roll` too (key_max_lifetime_days), to mint keys the service accepts.
KEY_MAX_LIFETIME = "KEY_MAX_LIFETIME_DAYS"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
EVERY_IPV4 = ipaddress.IPv4Network("0.0.0.0/0")
EVERY_IPV6 = ipaddress.IPv6Network("::/0")
# Every IPv4 address, as a dual-stack socket (IPv4-mapped) and a NAT64 gateway spell it.
IPV4_SPELLINGS = (ipaddress.IPv6Network("::ffff:0:0/96"), ipaddress.IPv6Network("64:ff9b::/96"))
# The cgroup this process sees as its own (a container's, in a cgroup namespace).
CGROUP = Path("/sys/fs/cgroup")
# Workers by default with shared limits: one per usable CPU, up to this many.
MOST_WORKERS = 8


def rate_limits(text: str) -> tuple[RateLimitItem, ...]:
    """Limits in Flask-Limiter's notation. An amount of zero locks callers out; a window of
    zero, which the parser would quietly read as one, means the value is not what was meant."""
    try:
        parsed = tuple(parse_many(text))
    except ValueError:
        parsed = ()
    if not parsed:
        raise Invalid("is not a rate limit such as '100 per minute' or '10/second'")
    if ZERO_WINDOW.search(text) or any(item.amount < 1 for item in parsed):
        raise Invalid("needs at least one request per window of at least one second")
    return parsed


def rate_limit(text: str) -> str:
    rate_limits(text)
    return text


def storage_uri(text: str) -> str:
    """A storage URI that its client will read as written: a password holding ``#``, ``/`` or
    ``?`` unencoded would be split into another part of the URI, and quoted in a later error."""
    scheme, sep, _ = text.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES:
        raise Invalid(f"scheme must be one of {', '.join(STORAGE_SCHEMES)}")
    if scheme == "memory":
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # a port that is not a number (often the rest of a password), or a lone '['
        raise Invalid(UNPARSABLE_URI) from None
    database = parts.path.strip("/")
    if (
        port == 0
        or not parts.hostname
        or parts.fragment
        or (scheme in ("redis", "rediss") and database and not database.isdigit())
    ):
        raise Invalid(UNPARSABLE_URI)
    return text


def key_ring(text: str) -> KeyRing:
    try:
        return KeyRing.from_text(KEY_PREFIX, text)
    except EntryError as error:
        raise Invalid(str(error)) from None


def readable_file(text: str) -> Path:
    try:
        Path(text).read_bytes()
    except OSError as error:
        raise Invalid(f"cannot read the file ({type(error).__name__})") from None
    return Path(text)


def directory(text: str) -> Path:
    """A directory the service may create at start; an absolute path, so that every process
    reads the same one whatever its working directory."""
    if not text:
        raise Invalid("must be a directory path")
    path = Path(text).absolute()
    if path.exists() and not path.is_dir():
        raise Invalid("exists and is not a directory")
    return path


def _as_ipv4(network: Network) -> ipaddress.IPv4Network | None:
    """The IPv4 clients an IPv6 range holds under another spelling: a dual-stack socket shows an
    IPv4 client as ::ffff:a.b.c.d, a NAT64 gateway as 64:ff9b::a.b.c.d."""
    if isinstance(network, ipaddress.IPv4Network):
        return network
    for spelling in IPV4_SPELLINGS:
        if network.subnet_of(spelling):
            start = int(network.network_address) - int(spelling.network_address)
            return ipaddress.IPv4Network((start, network.prefixlen - 96))
    return None


def proxy_networks(text: str) -> tuple[Network, ...]:
    """The TLS-terminating proxies to trust. A list that covers every client, alone or together,
    under any spelling of an address, would let every client report its own address and scheme,
    so it is refused."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if "*" in parts:
        raise Invalid("'*' trusts every client; name the proxies")
    try:
        networks = tuple(ipaddress.ip_network(part, strict=False) for part in parts)
    except ValueError:
        raise Invalid("must be IP addresses or networks, comma-separated") from None
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    v4 = [found for n in networks if (found := _as_ipv4(n)) is not None]
    if (
        EVERY_IPV4 in ipaddress.collapse_addresses(v4)
        or EVERY_IPV6 in ipaddress.collapse_addresses(v6)
        or any(spelling.subnet_of(n) for n in v6 for spelling in IPV4_SPELLINGS)
    ):
        raise Invalid("covers every client under some spelling of its address; name the proxies")
    return networks


def is_shared(uri: str) -> bool:
    """True when a storage URI names counters that every worker and host share."""
    return not uri.startswith(PER_PROCESS_STORAGE)


def _default_workers(values: Mapping[str, Any]) -> str:
    # In-memory limits are per process: more than one worker would multiply every limit.
    if not is_shared(values["ratelimit_storage_uri"]):
        return "1"
    return str(min(values["cpu_count"], MOST_WORKERS))


def _openapi_default(values: Mapping[str, Any]) -> str:
    # The document maps every route and error: handy in development, an attack map elsewhere.
    return "true" if values["app_env"] == "development" else "false"


def _show_keys(ring: KeyRing) -> object:
    return [key.describe() for key in ring]


def _show_networks(networks: tuple[Network, ...]) -> object:
    return [str(network) for network in networks]


def _show_optional(value: object) -> object:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment, validated. The table of variables."""

    app_env: str = field(metadata=read("APP_ENV", choice(*ENVIRONMENTS), "production"))
    keys: KeyRing = field(
        metadata=read("API_KEYS", key_ring, missing=NO_KEYS, from_file=True, show=_show_keys)
    )
    key_max_lifetime_days: int | None = field(metadata=read(KEY_MAX_LIFETIME, whole(1, 3650)))
    ratelimit_storage_uri: str = field(
        metadata=read(
            "RATELIMIT_STORAGE_URI", storage_uri, PER_PROCESS_STORAGE, from_file=True, show=redacted_uri
        )
    )
    ratelimit_strategy: str = field(metadata=read("RATELIMIT_STRATEGY", choice(*STRATEGIES), "fixed-window"))
    ratelimit_default: str = field(metadata=read("RATELIMIT_DEFAULT", rate_limit, "100 per minute"))
    ratelimit_auth_failures: str = field(
        metadata=read("RATELIMIT_AUTH_FAILURES", rate_limit, "20 per minute")
    )
    # Requests that match no route (404, 405) per client address: each is a path or a method that
    # exists nowhere, logged and counted like any other request.
    ratelimit_unmatched: str = field(metadata=read("RATELIMIT_UNMATCHED", rate_limit, "1000 per minute"))
    # One budget for all the keys of a tenant: minting more keys buys no more quota.
    ratelimit_tenant: str | None = field(metadata=read("RATELIMIT_TENANT", rate_limit))
    tls_cert_file: Path | None = field(metadata=read("TLS_CERT_FILE", readable_file, show=_show_optional))
    tls_key_file: Path | None = field(metadata=read("TLS_KEY_FILE", readable_file, show=_show_optional))
    forwarded_allow_ips: tuple[Network, ...] = field(
        metadata=read("FORWARDED_ALLOW_IPS", proxy_networks, "", show=_show_networks)
    )
    max_content_length: int = field(metadata=read("MAX_CONTENT_LENGTH", whole(1, 1 << 30), "65536"))
    hsts_preload: bool = field(metadata=read("HSTS_PRELOAD", flag, "false"))
    openapi_enabled: bool = field(metadata=read("OPENAPI_ENABLED", flag, _openapi_default))
    log_level: str = field(metadata=read("LOG_LEVEL", choice(*LOG_LEVELS), "INFO"))
    log_line_limit: int = field(metadata=read("LOG_LINE_LIMIT", whole(256, 65536), "1024"))
    bind: str = field(metadata=read("BIND", str, "127.0.0.1:8443"))
    workers: int = field(metadata=read("WEB_CONCURRENCY", whole(1, 64), _default_workers))
    # Per gunicorn worker (worker.py): what one client address, or one trusted proxy, may hold.
    connections_per_address: int = field(metadata=read("CONNECTIONS_PER_ADDRESS", whole(1, 100_000), "64"))
    connections_per_proxy: int = field(metadata=read("CONNECTIONS_PER_PROXY", whole(1, 100_000), "1000"))
    # A kept-alive connection ends after this many requests or seconds, so none is held forever.
    connection_max_requests: int = field(
        metadata=read("CONNECTION_MAX_REQUESTS", whole(1, 1_000_000), "1000")
    )
    connection_max_age: int = field(metadata=read("CONNECTION_MAX_AGE", whole(1, 86_400), "300"))
    # Seconds an answer may wait for the client to take it (one that stopped reading) before a reset.
    write_timeout: int = field(metadata=read("WRITE_TIMEOUT", whole(1, 3_600), "30"))
    metrics_dir: Path | None = field(metadata=read(METRICS_DIR, directory, show=_show_optional))
    database: DatabaseSettings = field(metadata={"table": "database"})

    @property
    def development(self) -> bool:
        return self.app_env == "development"

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def shared_limits(self) -> bool:
        """True when every worker and host counts against the same limits."""
        return is_shared(self.ratelimit_storage_uri)

    def describe(self) -> dict[str, object]:
        """The resolved configuration, each value as its variable's ``show`` allows."""
        return {**_describe(self), **_describe(self.database)}


def _describe(table: object) -> dict[str, object]:
    """A table's values, each as its variable's ``show`` allows."""
    return {spec.name: spec.show(getattr(table, name)) for name, spec in _variables(type(table)).items()}


def _variables(table: type = Settings) -> dict[str, Variable]:
    return {f.name: f.metadata["variable"] for f in dataclasses.fields(table) if "variable" in f.metadata}


def _raw(env: Mapping[str, str], spec: Variable) -> tuple[str, str | None]:
    """The variable's text and the name it came from (NAME, or NAME_FILE for a secret file)."""
    inline = env.get(spec.name)
    path = env.get(f"{spec.name}_FILE") if spec.from_file else None
    if inline is not None and path is not None:
        raise ConfigError(spec.name, f"set {spec.name} or {spec.name}_FILE, not both")
    if path is None:
        return spec.name, inline
    try:
        return f"{spec.name}_FILE", Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{spec.name}_FILE", f"cannot read the file ({type(error).__name__})") from None


def settings_from(env: Mapping[str, str], cpu_count: int = 1) -> Settings:
    """Build and validate settings from a mapping (the environment, or a test's dict)."""
    values = _read(Settings, env, {"cpu_count": cpu_count})
    del values["cpu_count"]
    settings = Settings(**values, database=database_settings_from(env))
    _check_transport(settings)
    _check_key_lifetimes(settings.keys, settings.key_max_lifetime_days, dt.datetime.now(dt.UTC))
    return settings


def database_settings_from(env: Mapping[str, str]) -> DatabaseSettings:
    """The database's own table, alone: what ``alembic`` needs, without the service's keys."""
    return DatabaseSettings(**_read(DatabaseSettings, env, {}))


def _read(table: type, env: Mapping[str, str], values: dict[str, Any]) -> dict[str, Any]:
    """Parse each variable of ``table`` into ``values``; defaults may read earlier values."""
    for name, spec in _variables(table).items():
        values[name] = _value(spec, env, values)
    return values


def _value(spec: Variable, env: Mapping[str, str], values: Mapping[str, Any]) -> Any:
    source, text = _raw(env, spec)
    default = spec.default(values) if callable(spec.default) else spec.default
    text = default if text is None else text
    if text is None:
        if spec.missing is not None:
            raise ConfigError(spec.name, spec.missing)
        return None
    try:
        return spec.parse(text.strip())
    except Invalid as error:
        raise ConfigError(source, str(error)) from None


def _check_key_lifetimes(keys: KeyRing, max_days: int | None, now: dt.datetime) -> None:
    """Under a maximum lifetime, every key expires within it: a key minted before the rule, or
    given a far expiry by hand, would otherwise outlive every rotation the rule is there to force."""
    if max_days is None:
        return
    latest = now + dt.timedelta(days=max_days)
    for key in keys:
        if key.expires is None:
            raise ConfigError(
                KEY_MAX_LIFETIME,
                f"entry {key.key_id!r} has no expiry; give it one at most {max_days} days ahead "
                "('keys roll' does)",
            )
        if key.accepted_after(latest):
            raise ConfigError(
                KEY_MAX_LIFETIME,
                f"entry {key.key_id!r} expires {format_expiry(key.expires)}, more than {max_days} days ahead",
            )


def _check_transport(settings: Settings) -> None:
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if (cert is None) != (key is None):
        missing = "TLS_CERT_FILE" if cert is None else "TLS_KEY_FILE"
        raise ConfigError(missing, "not set: TLS needs both TLS_CERT_FILE and TLS_KEY_FILE")
    if cert is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except ssl.SSLError:
            raise ConfigError("TLS_KEY_FILE", "is not the private key of TLS_CERT_FILE, or not PEM") from None
    elif not settings.forwarded_allow_ips and settings.app_env == "production":
        # Plain HTTP would carry keys in cleartext; redirecting would hide that it happened.
        raise ConfigError(
            "TLS_CERT_FILE",
            "not set: serve HTTPS with TLS_CERT_FILE and TLS_KEY_FILE, "
            "or name the TLS-terminating proxies in FORWARDED_ALLOW_IPS",
        )


def export_metrics_dir(path: Path) -> None:
    """Hand the metrics directory to prometheus_client, which reads its variable when it is
    first imported: in this process and in every worker forked from it afterwards."""
    os.environ[METRICS_DIR] = str(path)


def load_settings() -> Settings:
    """Settings from the process environment; ``.env`` only when APP_ENV=development.

    The real environment decides: a ``.env`` file left on a production host is never read,
    and values from the real environment win over ``.env``.
    """
    _load_dotenv()
    return settings_from(os.environ, cpu_count=usable_cpus())


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may use, at least one: those it may run on (its affinity, which
    ``taskset`` or a container's cpuset narrows), and no more than its cgroup's CPU quota.
    ``os.cpu_count()`` counts the host's: in a container limited to two CPUs on a 64-CPU host, it
    would start eight workers, each throttled."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, cpus if quota is None else min(cpus, quota))


def cpu_quota(cgroup: Path) -> int | None:
    """The cgroup's CPU bandwidth in whole CPUs, rounded up; None without a limit.

    cgroup v2 writes ``<quota> <period>`` (or ``max <period>``) in ``cpu.max``; v1 the same two
    numbers in ``cpu/cpu.cfs_quota_us`` (-1: no limit) and ``cpu/cpu.cfs_period_us``.
    """
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text()
        except OSError:
            return None
    try:
        microseconds, per = int(quota), int(period)
    except ValueError:  # "max", or a file this code does not know
        return None
    if microseconds <= 0 or per <= 0:
        return None
    return -(-microseconds // per)


def health_target() -> tuple[str, Path | None]:
    """BIND and TLS_CERT_FILE alone, by the same rules: where the health check calls, and the
    certificate it trusts (None: plain HTTP, behind a proxy)."""
    _load_dotenv()
    variables = _variables()
    bind: str = _value(variables["bind"], os.environ, {})
    certificate: Path | None = _value(variables["tls_cert_file"], os.environ, {})
    return bind, certificate


def key_max_lifetime_days() -> int | None:
    """KEY_MAX_LIFETIME_DAYS alone, by the same rules: what `keys new` and `keys roll` default an
    expiry to and refuse to exceed, without needing the rest of the service's configuration."""
    _load_dotenv()
    days: int | None = _value(_variables()["key_max_lifetime_days"], os.environ, {})
    return days


def load_key_ring() -> KeyRing:
    """API_KEYS (or API_KEYS_FILE) alone, by the same rules: what `keys revoke` and `keys report`
    check ids against, without needing the rest of the service's configuration."""
    _load_dotenv()
    ring: KeyRing = _value(_variables()["keys"], os.environ, {})
    return ring


def load_database_settings() -> DatabaseSettings:
    """The database's settings from the process environment, by the same rules."""
    _load_dotenv()
    return database_settings_from(os.environ)


def _load_dotenv() -> None:
    if os.environ.get("APP_ENV") == "development":
        from dotenv import load_dotenv

        load_dotenv(".env", override=False)


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
