"""Alembic's entry point: the database, its settings and its lock come from the project's
``database`` module, so ``alembic upgrade head`` reads the same configuration as the service."""

from alembic import context

from {{ cookiecutter.package_name }} import logging as logs
from {{ cookiecutter.package_name }}.database import run_migrations
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX

if context.config.config_file_name is not None:
    # Run as `alembic` from a shell: its progress lines, through the masking filter. Called
    # from the service (no alembic.ini), the service's own logging stays as it is.
    logs.configure(key_prefix=KEY_PREFIX, json_lines=False, level="INFO")

run_migrations(context)
