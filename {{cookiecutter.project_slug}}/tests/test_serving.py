"""What the gunicorn master decides before its workers exist (serving.py, gunicorn.conf.py): the
metrics directory each master owns, the settings a refused reload keeps, the warning that
APP_ENV=test gives, and gunicorn's logger as the service narrows it."""

from __future__ import annotations

import inspect
import logging
import re
import runpy
import stat
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from {{ cookiecutter.package_name }} import create_app, serving
from {{ cookiecutter.package_name }}.metricfiles import LOCK
from {{ cookiecutter.package_name }}.serving import (
    MADE_BY_A_MASTER,
    make_metrics_dir,
    metrics_home,
    reload_settings,
    restore_previous,
    warn_test_environment,
)
from {{ cookiecutter.package_name }}.settings import ConfigError, settings_from

from .support import PROJECT, KeySet, bearer


@pytest.fixture
def master(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process as a gunicorn master that has not read its configuration yet."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("_serving", "_previous", "_made_metrics_dir"):
        monkeypatch.setattr(serving, name, None)
    return env


# --- The metrics directory of each master ------------------------------------------------------


def test_a_master_makes_a_private_directory_of_its_own_in_the_one_the_operator_named(tmp_path: Path) -> None:
    named = tmp_path / "not-yet" / "metrics"
    made = make_metrics_dir(named)
    assert made.parent == named
    assert stat.S_IMODE(named.stat().st_mode) == stat.S_IMODE(made.stat().st_mode) == 0o700
    assert MADE_BY_A_MASTER.fullmatch(made.name)
    assert (made / LOCK).is_file()
    assert make_metrics_dir(named) != made, "each master its own"


def test_a_directory_that_another_master_made_is_never_taken_for_the_operators(tmp_path: Path) -> None:
    """A master started by USR2 inherits its parent's environment, where its parent's directory
    stands after a reload: it makes its own beside that one, which its parent removes on retiring."""
    inherited = make_metrics_dir(tmp_path)
    assert metrics_home(inherited) == tmp_path
    assert metrics_home(tmp_path / "metrics") == tmp_path / "metrics"
    assert metrics_home(tmp_path / "metrics-prod") == tmp_path / "metrics-prod"
    # A name like a master's, but no master's fold lock in it: the operator's.
    named = tmp_path / "metrics-2027-prod"
    named.mkdir()
    assert metrics_home(named) == named
    assert metrics_home(None) is None  # the system's temporary directory


# --- Reloads ---------------------------------------------------------------------------------


def test_an_app_built_without_settings_serves_those_the_master_validated(
    master: dict[str, str], keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a gunicorn worker builds it: from the master's settings, not from an environment read
    again (which a failed reload may have left other)."""
    reload_settings()
    monkeypatch.setenv("API_KEYS", keys.no_scopes.entry)
    app = create_app()
    try:
        response = app.test_client().get("/v1/whoami", headers=bearer(keys.reader))
        assert response.status_code == 200
    finally:
        app.extensions["keywatch"].close()
        app.extensions["stores"].close()


def test_a_reload_refused_on_gunicorns_values_leaves_the_settings_before_it_in_force(
    master: dict[str, str], keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, refused = reload_settings()
    assert refused is None
    monkeypatch.setenv("API_KEYS", keys.writer.entry)
    second, refused = reload_settings()
    assert refused is None
    assert serving.serving_settings() is second
    assert restore_previous(ConfigError("WEB_CONCURRENCY", "a start would refuse it")) is first
    assert serving.serving_settings() is first


# --- APP_ENV=test ----------------------------------------------------------------------------


@pytest.mark.parametrize("app_env", ["test", "development", "production"])
def test_app_env_test_alone_is_named_unsafe_at_start(
    env: dict[str, str], app_env: str, capsys: pytest.CaptureFixture[str], tls_files: tuple[Path, Path]
) -> None:
    tls = {"TLS_CERT_FILE": str(tls_files[0]), "TLS_KEY_FILE": str(tls_files[1])}
    warn_test_environment(settings_from({**env, **tls, "APP_ENV": app_env}))
    expected = (
        "warning: APP_ENV: test serves plain HTTP and accepts keys over it; "
        "for the test suite only, never a deployment\n"
    )
    assert capsys.readouterr().err == (expected if app_env == "test" else "")


# --- gunicorn's logger -----------------------------------------------------------------------


@pytest.fixture
def gunicorn_conf(master: dict[str, str]) -> dict[str, Any]:
    """gunicorn.conf.py's names, as gunicorn reads them."""
    return runpy.run_path(str(PROJECT / "gunicorn.conf.py"))


def counting(logger_class: type[Logger]) -> type[Logger]:
    """``logger_class`` counting the access lines it builds, without gunicorn's set-up of the
    logging module (which would replace this process's handlers)."""

    class Counting(logger_class):  # type: ignore[misc,valid-type]
        def __init__(self, cfg: Config) -> None:
            self.cfg, self.built = cfg, 0
            self.access_log = logging.getLogger("tests.gunicorn.access")
            self.access_log.disabled = True

        def atoms(self, resp: object, req: object, environ: object, request_time: object) -> dict[str, str]:
            self.built += 1
            return {}

    return Counting


def configured(gunicorn_conf: dict[str, Any], **settings: Any) -> Config:
    cfg = Config()
    cfg.set("logconfig_dict", gunicorn_conf["logconfig_dict"])
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


def test_gunicorn_keeps_the_signature_of_the_method_the_access_logger_overrides(
    gunicorn_conf: dict[str, Any],
) -> None:
    parameters = ["self", "resp", "req", "environ", "request_time"]
    assert list(inspect.signature(Logger.access).parameters) == parameters
    assert list(inspect.signature(gunicorn_conf["AccessLogger"].access).parameters) == parameters


def test_gunicorn_builds_access_lines_nobody_asked_for_which_the_access_logger_skips(
    gunicorn_conf: dict[str, Any],
) -> None:
    """Were gunicorn to stop building them with only a logging configuration set, AccessLogger
    would have no reason left to exist: this test fails then, to say so."""
    stock = counting(Logger)(configured(gunicorn_conf))
    stock.access(None, None, {}, None)
    assert stock.built == 1, "gunicorn no longer builds unwanted access lines: drop AccessLogger"

    ours = counting(gunicorn_conf["AccessLogger"])(configured(gunicorn_conf))
    ours.access(None, None, {}, None)
    assert ours.built == 0
    assert gunicorn_conf["logger_class"] is gunicorn_conf["AccessLogger"]


def test_the_access_logger_writes_the_lines_an_access_log_asks_for(gunicorn_conf: dict[str, Any]) -> None:
    ours = counting(gunicorn_conf["AccessLogger"])(configured(gunicorn_conf, accesslog="-"))
    ours.access(None, None, {}, None)
    assert ours.built == 1


def test_the_gunicorn_configuration_wires_every_hook_the_service_needs(gunicorn_conf: dict[str, Any]) -> None:
    hooks = {"on_starting", "on_reload", "post_fork", "child_exit", "on_exit", "ssl_context"}
    cfg = Config()
    assert hooks <= set(cfg.settings), "a hook gunicorn no longer knows would be ignored silently"
    assert all(callable(gunicorn_conf[hook]) for hook in hooks)
    assert re.fullmatch(r"\w+\.worker\.FairGeventWorker", gunicorn_conf["worker_class"])
