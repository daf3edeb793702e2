"""The OpenAPI document, served only when OPENAPI_ENABLED says so: no map of the API by default."""

from functools import cache
from importlib import resources

from flask import Blueprint, Response

from ..limits import exempt

# The top-level package: the document ships next to app.py as package data.
PACKAGE = __name__.split(".", 1)[0]

blueprint = Blueprint("openapi", __name__)


@cache
def document() -> bytes:
    return resources.files(PACKAGE).joinpath("openapi.json").read_bytes()


@blueprint.get("/openapi.json")
@exempt
def openapi_json() -> Response:
    return Response(document(), mimetype="application/json")
