"""A leaked key's revocation by whoever holds it, so a key found in a public repository, a log or
a paste is dead on every server within seconds of its report, without waiting for an operator.

Holding the key is the proof: the route needs no other credential (``@public``). It answers 202
whatever key is sent (configured, unknown, malformed, expired, revoked already), and the request
does the same work for each (``KeyWatch.report``): neither the answer nor its timing tells
whether the key was valid. A body that is not ``{"key": <string>}`` gets the 422 of every route:
its shape is checked before any key is looked at, so it tells nothing about keys, and a reporter
who sent the wrong field learns that nothing was revoked. The key is never logged: the request
line has no body, and the writer's line names the key id.

The one blueprint that handles a key: it passes it on to the verifier, and keeps nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint, current_app, g, request
from pydantic import BaseModel, ConfigDict, Field

from ..access import public
from ..keywatch import KeyWatch, Origin
from ..limits import limit
from ..shapes import accepts, answers

# Per client address (the route takes no key): a person reporting a key needs a handful, and
# a flood of reports costs a digest and a dictionary probe each.
REPORT_LIMIT = "20 per minute"

blueprint = Blueprint("keys", __name__, url_prefix="/v1/keys")


class KeyReport(BaseModel):
    key: Annotated[
        str,
        Field(description="The key, as it leaked. Anything else is accepted as well, and revokes nothing."),
    ]


class Accepted(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["accepted"]


@blueprint.post("/revoke")
@public
@limit(REPORT_LIMIT)
@accepts(body=KeyReport)
@answers(
    202,
    Accepted,
    "Accepted, whatever was sent; a key of this service is refused by every server within 2 s.",
)
def revoke(report: KeyReport) -> tuple[dict[str, str], int]:
    """Revoke a leaked key by sending it: no other credential (20 per minute per address)."""
    watch: KeyWatch = current_app.extensions["keywatch"]
    watch.report(report.key, Origin(g.request_id, request.remote_addr))
    return {"status": "accepted"}, 202
