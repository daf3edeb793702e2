"""Refuse names that would bake a broken project, before any file is written."""

import re
import sys

CHECKS = (
    (
        "project_slug",
        "{{ cookiecutter.project_slug }}",
        r"[a-z][a-z0-9]*(-[a-z0-9]+)*",
        "lowercase letters, digits and single hyphens, starting with a letter",
    ),
    (
        "package_name",
        "{{ cookiecutter.package_name }}",
        r"[a-z][a-z0-9]*(_[a-z0-9]+)*",
        "a lowercase Python identifier: letters, digits and single underscores",
    ),
    (
        "key_prefix",
        "{{ cookiecutter.key_prefix }}",
        r"[a-z][a-z0-9]{1,9}",
        "2 to 10 lowercase letters or digits, starting with a letter",
    ),
)

# Names that would shadow a module the service itself imports.
RESERVED_PACKAGES = {"flask", "gunicorn", "limits", "flask_limiter", "flask_talisman", "redis", "tests"}


def main() -> int:
    for name, value, pattern, rule in CHECKS:
        if not re.fullmatch(pattern, value):
            print(f"error: {name} {value!r} is invalid: use {rule}.", file=sys.stderr)
            return 1
    package = "{{ cookiecutter.package_name }}"
    if package in RESERVED_PACKAGES or package in sys.stdlib_module_names:
        print(f"error: package_name {package!r} would shadow an installed module.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
