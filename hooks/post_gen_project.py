"""Finish a bake: a development key that no one else has, and only the chosen files."""

import shutil
import sys
from pathlib import Path

PACKAGE = "{{ cookiecutter.package_name }}"

# Each optional feature is a set of whole files; unchosen ones are removed here, so no
# template conditionals end up inside the code.
OPTIONAL_PATHS = {
    "container": ("Dockerfile", ".dockerignore"),
    "github_actions": (".github",),
}
CHOSEN = {
    "container": "{{ cookiecutter.container }}" == "yes",
    "github_actions": "{{ cookiecutter.github_actions }}" == "yes",
}

DEV_SCOPES = ("items:read", "items:write")


def remove_unchosen(root: Path) -> None:
    for feature, paths in OPTIONAL_PATHS.items():
        if CHOSEN[feature]:
            continue
        for name in paths:
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def write_dev_env(root: Path) -> str:
    """Mint a key with the project's own code, so the format has one implementation."""
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(root / "src"))
    keys = __import__(f"{PACKAGE}.keys", fromlist=["mint"])
    minted = keys.mint("{{ cookiecutter.key_prefix }}", key_id="dev", scopes=DEV_SCOPES, tenant="dev")
    env = root / ".env"
    env.write_text(
        "# Development only: read when APP_ENV=development is set in the real environment\n"
        "# (make run does); the line below cannot switch a server to development by itself.\n"
        "# Git-ignored. The key itself is not stored here, only its digest.\n"
        "APP_ENV=development\n"
        f"API_KEYS={minted.entry}\n"
        "TLS_CERT_FILE=.dev/localhost.pem\n"
        "TLS_KEY_FILE=.dev/localhost-key.pem\n"
        "ITEMS_DB=.dev/items.sqlite3\n",
        encoding="utf-8",
    )
    env.chmod(0o600)
    return minted.secret


def main() -> int:
    root = Path.cwd()
    remove_unchosen(root)
    secret = write_dev_env(root)
    print(
        f"""
Created {root.name}.

Development key (shown once; .env holds only its digest):
    {secret}

Next steps:
    cd {root.name}
    python -m venv .venv && . .venv/bin/activate
    make install      # the service and its dev tools
    make test         # its own test suite
    make run          # HTTPS on https://localhost:8443 with a self-signed certificate
    curl --cacert .dev/localhost.pem -H "Authorization: Bearer {secret}" \\
        https://localhost:8443/v1/whoami
"""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
