"""Request and response shapes, declared once beside their route as pydantic models: the same
model validates what a client sends (422 problem+json naming the fields at fault, never quoting
what was sent, which may hold a key) and describes the route in the OpenAPI document.

* ``@accepts(body=NewOrder)`` (a subclass of :class:`Body`) reads the JSON body (body.py: 415,
  413, 408, 400), validates it strictly (no coercion: ``{"name": 7}`` is not a name) and passes
  the model to the view;
  ``@accepts(query=Page)`` does the same for the query string (where everything is text, so
  numbers are read from it).
* ``@answers(201, Order)`` and ``@answers(404)`` say what the route answers, for the document
  only: responses are not validated at run time (the tests hold each answer to the document).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError, field_validator

from .body import json_body
from .errors import fail

View = TypeVar("View", bound=Callable[..., Any])
Model = type[BaseModel]

ACCEPTS = "accepts"
ANSWERS = "answers"


class Body(BaseModel):
    """The base of every request body's shape: text that no database stores is refused, by name."""

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        # PostgreSQL refuses a NUL byte in text (a 500 were it to reach the driver), and C code
        # reading SQLite's text stops at it: a 422 naming the field, in every database.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain a NUL character (U+0000)")
        return value


@dataclass(frozen=True, slots=True)
class Accepts:
    body: Model | None = None
    query: Model | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    model: Model | None = None
    description: str | None = None


@functools.cache
def _field_names(model: Model) -> frozenset[str]:
    """Every property name the model (and the models inside it) declares: the only text of a
    validation error's location that may be shown, since anything else came from the client."""
    names: set[str] = set()
    pending = [model.model_json_schema()]
    while pending:
        schema = pending.pop()
        properties = schema.get("properties", {})
        names.update(properties)
        pending.extend(properties.values())
        pending.extend(schema.get("$defs", {}).values())
        pending.extend(value for value in schema.values() if isinstance(value, dict))
    return frozenset(names)


def _problems(model: Model, error: ValidationError, where: str) -> list[dict[str, str]]:
    known = _field_names(model)
    found = []
    for detail in error.errors(include_url=False, include_input=False, include_context=False):
        parts = [str(part) if isinstance(part, int) or part in known else "*" for part in detail["loc"]]
        found.append(
            {
                "pointer": "#/" + "/".join(parts) if where == "body" else "/".join(parts),
                "in": where,
                "detail": detail["msg"],
            }
        )
    return found


def _validated(model: Model, data: Any, where: str, *, strict: bool) -> BaseModel:
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as error:
        fail(422, errors=_problems(model, error, where))


def accepts(*, body: Model | None = None, query: Model | None = None) -> Callable[[View], View]:
    """Validate the body and/or the query string, and pass the models to the view: ``body``
    first, then ``query``, then the route's own arguments."""
    declared = Accepts(body, query)

    def wrap(view: View) -> View:
        @functools.wraps(view)
        def validating(**arguments: Any) -> Any:
            shaped = []
            if body is not None:
                shaped.append(_validated(body, json_body(), "body", strict=True))
            if query is not None:
                shaped.append(_validated(query, request.args.to_dict(), "query", strict=False))
            return view(*shaped, **arguments)

        setattr(validating, ACCEPTS, declared)
        return validating  # type: ignore[return-value]

    return wrap


def answers(
    status: int, model: Model | None = None, description: str | None = None
) -> Callable[[View], View]:
    """Document one status this route answers (and its body's shape), beyond the answers every
    route may give (400, 401, 403, 429, 500: the document adds those from the declarations)."""

    def mark(view: View) -> View:
        declared: tuple[Answer, ...] = getattr(view, ANSWERS, ())
        setattr(view, ANSWERS, (Answer(status, model, description), *declared))
        return view

    return mark


def accepted(view: object) -> Accepts:
    found: Accepts = getattr(view, ACCEPTS, Accepts())
    return found


def answered(view: object) -> tuple[Answer, ...]:
    found: tuple[Answer, ...] = getattr(view, ANSWERS, ())
    return found
