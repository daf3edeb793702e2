"""Liveness for load balancers: no key, no rate limit, nothing about the service revealed."""

from typing import Literal

from flask import Blueprint
from pydantic import BaseModel

from ..access import public
from ..limits import exempt
from ..shapes import answers

blueprint = Blueprint("health", __name__)


class Health(BaseModel):
    status: Literal["ok"]


@blueprint.get("/healthz")
@public
@exempt
@answers(200, Health, "The service is up.")
def healthz() -> dict[str, str]:
    """Liveness: no key, never rate limited."""
    return {"status": "ok"}
