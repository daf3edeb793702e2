"""Finish a bake: a development key that no one else has, and only the chosen files."""

import secrets
import shutil
import sys
from pathlib import Path

PACKAGE = "{{ cookiecutter.package_name }}"

# Each optional feature is a set of whole files; unchosen ones are removed here, so no
# template conditionals end up inside the code.
OPTIONAL_PATHS = {
    "container": ("Dockerfile", ".dockerignore", "tests/test_container.py"),
    "github_actions": (".github",),
    "sqlite": (
        f"src/{PACKAGE}/migrations/versions/sqlite_0001_items.py",
        f"src/{PACKAGE}/migrations/versions/sqlite_0002_key_records.py",
        "tests/test_sqlite.py",
    ),
    "postgresql": (
        "compose.yaml",
        "compose",
        f"src/{PACKAGE}/migrations/versions/postgresql_0001_items.py",
        f"src/{PACKAGE}/migrations/versions/postgresql_0002_key_records.py",
        "scripts/local_postgres.py",
        "tests/test_postgres.py",
        "tests/test_postgres_servers.py",
        "tests/test_row_level_security.py",
    ),
}
DATABASE = "{{ cookiecutter.database }}"
CHOSEN = {
    "container": "{{ cookiecutter.container }}" == "yes",
    "github_actions": "{{ cookiecutter.github_actions }}" == "yes",
    "sqlite": DATABASE == "sqlite",
    "postgresql": DATABASE == "postgresql",
}
# Modules with one version per database: `name.<database>.py` replaces `name.py` (the SQLite
# version) when that database is chosen, so shared code imports one name in every bake.
VARIANTS = (
    f"src/{PACKAGE}/database.py",
    f"src/{PACKAGE}/database_settings.py",
    f"src/{PACKAGE}/stores/connections.py",
    f"src/{PACKAGE}/stores/items.py",
    f"src/{PACKAGE}/stores/key_records.py",
    "tests/database.py",
    "scripts/local_database.py",
)

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


def use_variants(root: Path) -> None:
    for name in VARIANTS:
        path = root / name
        for variant in path.parent.glob(f"{path.stem}.*{path.suffix}"):
            if variant.name == f"{path.stem}.{DATABASE}{path.suffix}":
                variant.replace(path)
            else:
                variant.unlink()


def write_compose_secrets(root: Path, api_keys: str) -> str:
    """Passwords of the local PostgreSQL (compose.yaml's, or make db's: the same three), fresh on
    every bake, and the dev key's entry for compose's service; returns the .env lines that
    reach it from this host: the service's role, and the tables' owner for the migrations."""
    directory = root / ".dev"
    directory.mkdir(mode=0o700, exist_ok=True)
    superuser, owner, service = (secrets.token_urlsafe(24) for _ in range(3))
    files = {
        "postgres-password": superuser,
        "items-owner-password": owner,
        "items-password": service,
        "database-url": f"postgresql://items_service:{service}@postgres:5432/items",
        "database-migration-url": f"postgresql://items_owner:{owner}@postgres:5432/items",
        "api-keys": api_keys,
    }
    for name, value in files.items():
        # Readable inside the containers, whose users differ from yours: .dev/ itself is 0700.
        (directory / name).write_text(value + "\n", encoding="utf-8")
        (directory / name).chmod(0o644)
    return (
        f"DATABASE_URL=postgresql://items_service:{service}@127.0.0.1:5432/items\n"
        f"DATABASE_MIGRATION_URL=postgresql://items_owner:{owner}@127.0.0.1:5432/items\n"
    )


def write_dev_env(root: Path) -> str:
    """Mint a key with the project's own code, so the format has one implementation."""
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(root / "src"))
    keys = __import__(f"{PACKAGE}.keys", fromlist=["mint"])
    minted = keys.mint("{{ cookiecutter.key_prefix }}", key_id="dev", scopes=DEV_SCOPES, tenant="dev")
    database = (
        write_compose_secrets(root, minted.entry) if CHOSEN["postgresql"] else "ITEMS_DB=.dev/items.sqlite3\n"
    )
    env = root / ".env"
    env.write_text(
        "# Development only: read when APP_ENV=development is set in the real environment\n"
        "# (make run does); the line below cannot switch a server to development by itself.\n"
        "# Git-ignored. The key itself is not stored here, only its digest.\n"
        "APP_ENV=development\n"
        f"API_KEYS={minted.entry}\n"
        "TLS_CERT_FILE=.dev/localhost.pem\n"
        "TLS_KEY_FILE=.dev/localhost-key.pem\n" + database,
        encoding="utf-8",
    )
    env.chmod(0o600)
    return minted.secret


def next_steps(project: str, secret: str) -> str:
    """The first hour, in the order it works: a repository before the hooks, the fast tests
    before the slow ones, and the call that proves the service answers."""
    database = (
        "    make db           # PostgreSQL on this host, without containers\n"
        "    make migrate      # the schema, as the tables' owner\n"
        if CHOSEN["postgresql"]
        else ""
    )
    return (
        f"    cd {project}\n"
        "    git init          # make hooks installs into a repository\n"
        "    python -m venv .venv && . .venv/bin/activate\n"
        "    make install      # the locked dependencies, then the service (editable)\n"
        "    make hooks        # pre-commit: secret scan, .env kept out, ruff\n"
        "    make test-fast    # the fast tests, in seconds (make test runs every test, in minutes)\n"
        f"{database}"
        "    make run          # https://localhost:8443 (self-signed); then, from a second terminal:\n"
        f'    curl --cacert .dev/localhost.pem -H "Authorization: Bearer {secret}" '
        "https://localhost:8443/v1/whoami\n"
    )


def main() -> int:
    root = Path.cwd()
    remove_unchosen(root)
    use_variants(root)
    secret = write_dev_env(root)
    print(
        f"""
Created {root.name}.

Development key (shown once; .env holds only its digest):
    {secret}

Next steps:
{next_steps(root.name, secret)}"""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
