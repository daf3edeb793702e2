"""The OpenAPI document, served only when OPENAPI_ENABLED says so: no map of the API by default."""

from flask import Blueprint, Response, current_app, json

from ..access import public
from ..limits import exempt
from ..openapi import document

blueprint = Blueprint("openapi", __name__)


@blueprint.get("/openapi.json")
@public
@exempt
def openapi_json() -> Response:
    """This document."""
    # Built at the first request: Flask refuses new routes from then on.
    built: bytes | None = current_app.extensions.get("openapi")
    if built is None:
        built = current_app.extensions["openapi"] = json.dumps(document(current_app)).encode()
    return Response(built, mimetype="application/json")
