"""The image (Dockerfile): its health check is the service's own (tests/test_healthcheck.py runs
that command against a real gunicorn), never a copy that could call another port."""

from __future__ import annotations

import json
import re

from {{ cookiecutter.package_name }}.healthcheck import TIMEOUT, connection

from .support import PROJECT


def test_the_images_health_check_runs_the_services_own_check() -> None:
    dockerfile = (PROJECT / "Dockerfile").read_text()
    (command,) = re.findall(r"^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$", dockerfile, flags=re.MULTILINE)
    assert json.loads(command) == ["python", "-m", "{{ cookiecutter.package_name }}.healthcheck"]
    assert re.search(r"^ENV .*PYTHONPATH=/app/src", dockerfile, flags=re.MULTILINE | re.DOTALL)


def test_the_health_check_gives_up_before_the_images_healthcheck_stops_it() -> None:
    # Stopped by Docker, the check would print nothing; giving up first, it says why in one line.
    allowed = re.search(r"HEALTHCHECK .*--timeout=(\d+)s", (PROJECT / "Dockerfile").read_text("utf-8"))
    assert allowed is not None
    assert int(allowed[1]) > TIMEOUT
    assert connection("127.0.0.1:8443", None).timeout == TIMEOUT
