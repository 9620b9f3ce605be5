"""``gauntlet-admin``: migrate the database, create tenants and keys, export the OpenAPI spec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from service.settings import get_settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def migrate(database_url: str | None = None) -> None:
    """Bring the database schema to the newest migration."""
    from alembic import command
    from alembic.config import Config

    url = database_url or get_settings().database_url
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(config, "head")


def create_key(tenant_name: str, *, admin: bool = False, key_name: str = "") -> str:
    """Create (if needed) a tenant and a new API key for it; return the key."""
    from service.database import session_scope
    from service.tenants.service import create_api_key, get_or_create_tenant

    with session_scope() as session:
        tenant = get_or_create_tenant(session, tenant_name)
        return create_api_key(session, tenant, name=key_name, is_admin=admin)


def key_is_valid(key: str) -> bool:
    """Whether ``key`` is an active API key in the database."""
    from service.database import session_scope
    from service.tenants.service import authenticate

    with session_scope() as session:
        return authenticate(session, key) is not None


def ensure_local_key(path: Path, tenant_name: str = "default") -> str:
    """The admin key kept in ``path`` for the embedded setup, created on first use."""
    if path.exists():
        key = path.read_text().strip()
        if key and key_is_valid(key):
            return key
    key = create_key(tenant_name, admin=True, key_name="local admin")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def openapi_yaml() -> str:
    """The API's OpenAPI document as YAML (what ``openapi.yaml`` holds)."""
    from service.app import create_app

    return str(yaml.safe_dump(create_app().openapi(), sort_keys=False, allow_unicode=True))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gauntlet-admin``."""
    parser = argparse.ArgumentParser(prog="gauntlet-admin", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply database migrations")
    tenant = commands.add_parser("create-key", help="create a tenant (if new) and an API key")
    tenant.add_argument("tenant", help="tenant name")
    tenant.add_argument("--admin", action="store_true", help="mark the key as an admin key")
    tenant.add_argument("--name", default="", help="a label for the key")
    local = commands.add_parser("local-key", help="print the embedded setup's key, made once")
    local.add_argument("--file", type=Path, default=None)
    export = commands.add_parser("openapi", help="write the OpenAPI document as YAML")
    export.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.command == "migrate":
        migrate()
    elif args.command == "create-key":
        sys.stdout.write(create_key(args.tenant, admin=args.admin, key_name=args.name) + "\n")
    elif args.command == "local-key":
        path = args.file or get_settings().data_dir / "api-key"
        sys.stdout.write(ensure_local_key(path) + "\n")
    elif args.command == "openapi":
        document = openapi_yaml()
        if args.output:
            args.output.write_text(document)
        else:
            sys.stdout.write(document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
