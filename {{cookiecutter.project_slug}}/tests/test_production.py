"""The production recipe (docs/production.md) and its systemd unit: every variable named, the unit
accepted by systemd, and gunicorn started from elsewhere with -c and a pidfile, reloaded by it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.settings import settings_from

from .support import PROJECT, KeySet, Server, free_port, server_env, wait_until_serving
from .test_reliability import eventually, status, write_keys

RECIPE = PROJECT / "docs" / "production.md"
UNIT = PROJECT / "deploy" / "{{ cookiecutter.project_slug }}.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def env_file_of_the_recipe() -> str:
    block = re.search(r"cat > /etc/\S+/env <<'EOF'\n(.*?)\nEOF\n", RECIPE.read_text(), re.DOTALL)
    assert block is not None, "docs/production.md has no env file block"
    return block.group(1)


def test_the_recipe_names_every_variable_the_service_reads(env: dict[str, str]) -> None:
    named = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)(?==|:)", env_file_of_the_recipe(), re.MULTILINE))
    for variable in settings_from(env).describe():
        assert {variable, f"{variable}_FILE"} & named, f"{variable} is missing from docs/production.md"


def test_a_shell_reads_the_recipes_env_file_as_systemd_does(tmp_path: Path) -> None:
    # An unquoted value with spaces is one value to systemd, but a command to a shell.
    env_file = tmp_path / "env"
    env_file.write_text(env_file_of_the_recipe() + "\n")
    shell = subprocess.run(
        ["sh", "-c", f'set -a; . "{env_file}"; set +a; echo "$RATELIMIT_DEFAULT"'],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (shell.returncode, shell.stderr, shell.stdout) == (0, "", "100 per minute\n")


def test_the_unit_reads_the_recipes_env_file_and_reloads_with_sighup() -> None:
    unit = UNIT.read_text()
    assert "EnvironmentFile=/etc/{{ cookiecutter.project_slug }}/env\n" in unit
    assert "ExecReload=/bin/kill -s HUP $MAINPID\n" in unit
    assert "\nCapabilityBoundingSet=\n" in unit


NO_SYSTEMD = "systemd-analyze is not installed: the unit is not verified"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason=NO_SYSTEMD)
def test_systemd_verifies_the_unit_and_rates_its_exposure_low(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point the unit's directory at one that has gunicorn.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "gunicorn").symlink_to(Path(sys.executable).parent / "gunicorn")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/srv/{{ cookiecutter.project_slug }}", str(tmp_path)))
    verify = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)], capture_output=True, text=True, check=False
    )
    # verify exits 0 on a value it ignores; its warning is the failure.
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    security = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=true", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert security.returncode == 0, security.stdout[-2000:]


@pytest.mark.slow
def test_gunicorn_started_elsewhere_with_the_config_path_serves_and_reloads_by_its_pidfile(
    env: dict[str, str],
    keys: KeySet,
    tls_files: tuple[Path, Path],
    client_context: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    keys_file, pidfile = tmp_path / "api-keys", tmp_path / "gunicorn.pid"
    write_keys(keys_file, keys.reader)
    port = free_port()
    overrides = {
        **env,
        "API_KEYS_FILE": str(keys_file),
        "BIND": f"127.0.0.1:{port}",
        "TLS_CERT_FILE": str(tls_files[0]),
        "TLS_KEY_FILE": str(tls_files[1]),
    }
    overrides.pop("API_KEYS")
    log_path = tmp_path / "gunicorn.log"
    command = ["-m", "gunicorn", "-c", str(PROJECT / "gunicorn.conf.py"), "--pid", str(pidfile)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, *command],
            cwd=elsewhere,
            env=server_env(overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(port, process, log_path)
    try:
        wait_until_serving(server)
        assert status(server, client_context, keys.reader) == 200
        assert int(pidfile.read_text()) == process.pid

        write_keys(keys_file, keys.reader, keys.writer)
        os.kill(int(pidfile.read_text()), signal.SIGHUP)
        eventually(lambda: status(server, client_context, keys.writer) == 200)
    finally:
        output = server.stop()
    assert "No application module specified" not in output
    assert not pidfile.exists(), "the master removes its pidfile when it stops"
