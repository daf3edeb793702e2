"""An address that another process holds stops the start with a line naming BIND."""

from __future__ import annotations

import inspect
import socket
from pathlib import Path

import gunicorn.sock
import pytest

from {{ cookiecutter.package_name }}.serving import ADDRESS_IN_USE, BIND_HINT, GIVING_UP

from .support import free_port, run_gunicorn


def test_gunicorn_still_words_an_address_in_use_as_the_hint_expects() -> None:
    # BindHint recognises gunicorn's own lines; a release that rewords them would lose the hint.
    source = inspect.getsource(gunicorn.sock.create_sockets)
    assert f'"{ADDRESS_IN_USE}"' in source
    assert f'"{GIVING_UP}"' in source


@pytest.mark.slow
def test_an_address_in_use_is_named_once_with_bind(
    env: dict[str, str], tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        log_path = tmp_path / "gunicorn.log"
        process = run_gunicorn(
            {
                **env,
                "BIND": f"127.0.0.1:{port}",
                "TLS_CERT_FILE": str(tls_files[0]),
                "TLS_KEY_FILE": str(tls_files[1]),
            },
            log_path,
        )
        try:
            returncode = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text(encoding="utf-8", errors="replace")
    assert returncode != 0, output
    last = output.strip().splitlines()[-1]
    assert f"Can't connect to ('127.0.0.1', {port}): {BIND_HINT}" in last, output
    assert output.count(BIND_HINT) == 1, output
