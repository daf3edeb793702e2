"""Through a real gunicorn over real TLS: what a client on the network actually meets."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import pytest

from .support import KeySet, Server, bearer

pytestmark = pytest.mark.slow


def fetch(server: Server, path: str, context, headers: dict[str, str] | None = None):
    request = urllib.request.Request(server.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_gunicorn_serves_a_valid_key_over_tls(
    start_server: Callable[..., Server], keys: KeySet, client_context
) -> None:
    server = start_server()
    status, headers, body = fetch(server, "/v1/whoami", client_context, bearer(keys.reader))
    assert status == 200
    assert body == {"key_id": "reader", "tenant": "acme", "scopes": ["items:read"]}
    assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
