"""Liveness for load balancers: no key, no rate limit, nothing about the service revealed."""

from flask import Blueprint

from ..limits import exempt

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@exempt
def healthz() -> dict[str, str]:
    return {"status": "ok"}
