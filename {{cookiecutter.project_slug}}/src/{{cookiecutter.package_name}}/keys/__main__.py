"""``python -m <package>.keys``: the command line, with the service's maximum key lifetime, so a
key it mints or rolls is one the service will start with."""

import sys

from ..settings import key_max_lifetime_days
from .cli import main

if __name__ == "__main__":
    sys.exit(main(max_lifetime=key_max_lifetime_days))
