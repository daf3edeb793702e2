"""Tells a client which key it is using, and never the key itself."""

from flask import Blueprint
from pydantic import BaseModel, ConfigDict

from ..access import requires
from ..auth import current_caller
from ..shapes import answers

blueprint = Blueprint("whoami", __name__, url_prefix="/v1/whoami")


class Caller(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_id: str
    tenant: str
    scopes: list[str]


@blueprint.get("")
@requires()
@answers(200, Caller, "The key's id, tenant and scopes.")
def whoami() -> dict[str, object]:
    """The key's id, tenant and scopes (any valid key)."""
    caller = current_caller()
    return {"key_id": caller.key_id, "tenant": caller.tenant, "scopes": sorted(caller.scopes)}
