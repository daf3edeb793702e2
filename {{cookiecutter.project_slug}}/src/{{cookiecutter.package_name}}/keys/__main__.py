"""``python -m <package>.keys``: the command line, with the service's own settings, so a key it
mints or rolls is one the service will start with, and a revocation lands in the database every
worker reads."""

import sys
from contextlib import AbstractContextManager

from .. import logging as logs
from ..settings import key_max_lifetime_days, load_database_settings, load_key_ring
from .cli import main
from .format import KEY_PREFIX
from .records import Records, Service


def _records() -> AbstractContextManager[Records]:
    # Imported here: `keys new` needs no database driver.
    from ..stores.key_records import opened

    return opened(load_database_settings())


if __name__ == "__main__":
    # Revocations are logged as JSON lines, masked, whatever APP_ENV says: they are audit records.
    logs.configure(key_prefix=KEY_PREFIX, json_lines=True, level="INFO")
    sys.exit(main(max_lifetime=key_max_lifetime_days, service=Service(load_key_ring, _records)))
