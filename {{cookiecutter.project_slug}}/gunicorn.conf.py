"""gunicorn settings: TLS 1.2+ with forward-secret AEAD ciphers, masked logs, fail fast.

Every value here can be overridden with GUNICORN_CMD_ARGS or the command line, as gunicorn
documents; `gunicorn --print-config` shows what was resolved.
"""

import ssl
import sys

from gunicorn.glogging import Logger

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX
from {{ cookiecutter.package_name }}.logging import logging_config
from {{ cookiecutter.package_name }}.settings import ConfigError, check_workers, reload_settings

# Mozilla "intermediate": TLS 1.2 only with ECDHE and AEAD; TLS 1.3 suites are all AEAD.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

try:
    settings, refused = reload_settings()
except ConfigError as error:
    # One line naming the variable; SystemExit passes through gunicorn's config loader.
    sys.exit(f"error: {error}")
if refused is not None:
    # SIGHUP with a broken configuration: keep serving the one that worked, say why once.
    print(f"error: {refused}; reload refused, still serving the previous configuration", file=sys.stderr)

wsgi_app = "{{ cookiecutter.package_name }}:create_app()"
bind = [settings.bind]
workers = settings.workers  # 1 with memory:// limits; from the CPU count with Redis.
worker_class = "gthread"  # threads keep idle keep-alive connections off the workers' backs.
threads = settings.threads  # concurrent requests per worker.
keepalive = 5  # seconds an idle keep-alive connection stays open.
timeout = 30  # a worker silent this long is killed and replaced.
graceful_timeout = 30  # in-flight requests get this long to finish on SIGTERM or SIGHUP.
limit_request_line = 4094  # longest request line; keys never belong in it anyway.
limit_request_fields = 50  # most headers per request.
limit_request_field_size = 8190  # longest header, key headers included.
forwarded_allow_ips = ",".join(settings.forwarded_allow_ips)  # trust no one unless named.
proxy_allow_ips = ""  # no PROXY protocol.
control_socket_disable = True  # no admin socket: signals (HUP, TERM) are the interface.
accesslog = None  # the app writes one line per request itself (requestlog.py).
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(M)sms rid=%({x-request-id}o)s key=%({app.key_id}e)s'
logconfig_dict = logging_config(
    key_prefix=KEY_PREFIX, json_lines=not settings.development, level=settings.log_level
)

if settings.tls:
    certfile = str(settings.tls_cert_file)
    keyfile = str(settings.tls_key_file)


def ssl_context(conf: object, default_factory: object) -> ssl.SSLContext:
    """TLS 1.2 minimum, no compression, no renegotiation, AEAD-only suites for TLS 1.2."""
    context = default_factory()  # type: ignore[operator]
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


class AccessLogger(Logger):
    """gunicorn's logger, writing access lines only when --access-logfile asks for them.

    With a logging config, gunicorn would otherwise build every access line and then drop
    it: the app's own request line already says all of it.
    """

    def access(self, resp: object, req: object, environ: object, request_time: object) -> None:
        if self.cfg.accesslog is not None:
            super().access(resp, req, environ, request_time)


logger_class = AccessLogger


def on_starting(server: object) -> None:
    """Check again when -w or GUNICORN_CMD_ARGS changed the worker count after this file."""
    workers = server.cfg.workers  # type: ignore[attr-defined]
    if workers != settings.workers:
        try:
            check_workers(settings, workers)
        except ConfigError as error:
            sys.exit(f"error: {error}")
