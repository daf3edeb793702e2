"""Tells a client which key it is using, and never the key itself."""

from ..auth import current_caller, scoped_blueprint

blueprint = scoped_blueprint("whoami", __name__, url_prefix="/v1/whoami", scope=None)


@blueprint.get("")
def whoami() -> dict[str, object]:
    caller = current_caller()
    return {"key_id": caller.key_id, "tenant": caller.tenant, "scopes": sorted(caller.scopes)}
