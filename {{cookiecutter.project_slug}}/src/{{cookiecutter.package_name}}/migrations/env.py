"""Alembic's entry point: the database, its settings and its lock come from the project's
``database`` module, so ``alembic upgrade head`` reads the same configuration as the service,
and a configuration it cannot use stops it with the service's one line, not a traceback."""

import sys

from alembic import context

from {{ cookiecutter.package_name }} import logging as logs
from {{ cookiecutter.package_name }}.database import run_migrations
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX
from {{ cookiecutter.package_name }}.settings import ConfigError

# Run as `alembic` from a shell (alembic.ini). Called from the service or a test (no
# alembic.ini), its own logging and error handling stay as they are.
FROM_A_SHELL = context.config.config_file_name is not None

if FROM_A_SHELL:
    # Its progress lines, through the masking filter.
    logs.configure(key_prefix=KEY_PREFIX, json_lines=False, level="INFO")

try:
    run_migrations(context)
except ConfigError as error:
    if not FROM_A_SHELL:
        raise
    # The message names the variable and the problem, never the value.
    sys.exit(f"error: {error}")
