"""The pre-generation hook refuses names that would bake a broken project, leaving nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

from .conftest import TEMPLATE


@pytest.mark.parametrize(
    "context",
    [
        {"project_slug": "Bad Slug"},
        {"project_slug": "-leading-hyphen"},
        {"project_slug": "double--hyphen"},
        {"package_name": "1starts_with_digit"},
        {"package_name": "has-hyphen"},
        {"package_name": "flask"},
        {"package_name": "logging"},
        {"key_prefix": "ACME"},
        {"key_prefix": "a"},
        {"key_prefix": "muchtoolongprefix"},
        {"key_prefix": "ac_me"},
        {"project_name": "!!!"},
    ],
    ids=lambda context: "{}={}".format(*next(iter(context.items()))),
)
def test_invalid_names_are_refused_and_leave_no_output(tmp_path: Path, context: dict[str, str]) -> None:
    output = tmp_path / "out"
    with pytest.raises(FailedHookException):
        cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output), extra_context=context)
    assert not output.exists() or list(output.iterdir()) == []


def test_refusal_is_one_clear_line_naming_the_variable(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(FailedHookException):
        cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(tmp_path), extra_context={"key_prefix": "ACME"}
        )
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    rule = "use 2 to 10 lowercase letters or digits, starting with a letter."
    assert lines == [f"error: key_prefix 'ACME' is invalid: {rule}"]


@pytest.mark.parametrize(
    "context",
    [{"key_prefix": "ab"}, {"key_prefix": "x1y2z3w4v5"}, {"project_name": "Ünïcode Çafé API"}],
    ids=["short-prefix", "long-prefix", "unicode-name"],
)
def test_edge_names_that_are_valid_bake(tmp_path: Path, context: dict[str, str]) -> None:
    project = Path(
        cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(tmp_path), extra_context=context)
    )
    assert (project / "pyproject.toml").is_file()
