"""Who may call each route, declared in one line beside it and looked up when a request arrives,
so a route that declares nothing is closed to everyone however and whenever it was registered
(CWE-862, API5:2023).

Three declarations, each one line:

* ``@public`` on a view: no key needed (health checks, a leaked key's own revocation);
* ``@requires("reports:read")`` on a view, or ``@requires(read="a:read", write="a:write")``, or
  ``@requires()`` for any valid key;
* ``guard(blueprint, read="orders:read", write="orders:write")`` for every route of a blueprint.

A view's own declaration wins over its blueprint's. Reading methods (GET, HEAD, OPTIONS) need
the read scope, every other method the write scope. A route with no declaration answers 401
without a key and 403 with one: no scope grants what no one declared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, Flask
from flask.blueprints import BlueprintSetupState

View = TypeVar("View", bound=Callable[..., Any])

ATTRIBUTE = "declared_access"
EXTENSION = "access"
READING = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Access:
    """What a route asks of its caller: nothing (public), or a valid key with a scope."""

    public: bool = False
    read: str | None = None
    write: str | None = None

    def scope(self, method: str) -> str | None:
        """The scope this method needs; None: any valid key will do."""
        return self.read if method in READING else self.write


PUBLIC = Access(public=True)


class UndeclaredRoute(Exception):
    """A route that says nothing about who may call it: the service refuses to start with it."""


def public(view: View) -> View:
    """No key needed for this route."""
    setattr(view, ATTRIBUTE, PUBLIC)
    return view


def requires(read: str | None = None, write: str | None = None) -> Callable[[View], View]:
    """A valid key with ``read`` (for reading methods) and ``write`` (for the others, ``read``
    when not given); ``requires()`` accepts any valid key."""
    declared = Access(read=read, write=read if write is None else write)

    def mark(view: View) -> View:
        setattr(view, ATTRIBUTE, declared)
        return view

    return mark


def guard(blueprint: Blueprint, *, read: str | None, write: str | None = None) -> Blueprint:
    """Declare the access of every route of ``blueprint`` whose view declares none itself."""
    declared = Access(read=read, write=read if write is None else write)

    def remember(state: BlueprintSetupState) -> None:
        # Under its dotted name ("parent.child"), as Flask names a nested blueprint's endpoints
        # (BlueprintSetupState.add_url_rule): under its own name alone, a nested blueprint's
        # guard would never be found, and its parent's scopes would stand in for its own.
        name = f"{state.name_prefix}.{state.name}" if state.name_prefix else state.name
        state.app.extensions.setdefault(EXTENSION, {})[name] = declared

    blueprint.record_once(remember)
    return blueprint


class Declarations:
    """The access of each endpoint, read from its view (or its blueprint's) when first asked for
    and remembered by view: a view registered later is read when its first request arrives."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.by_blueprint: dict[str, Access] = app.extensions.setdefault(EXTENSION, {})
        self.known: dict[object, Access | None] = {}

    def of(self, endpoint: str) -> Access | None:
        view = self.app.view_functions.get(endpoint)
        try:
            return self.known[view]
        except KeyError:
            found = self.known[view] = self._read(endpoint, view)
            return found

    def _read(self, endpoint: str, view: object) -> Access | None:
        declared: Access | None = getattr(view, ATTRIBUTE, None)
        if declared is not None:
            return declared
        # "parent.child.view": the innermost blueprint that declared wins.
        names = endpoint.split(".")[:-1]
        for depth in range(len(names), 0, -1):
            found = self.by_blueprint.get(".".join(names[:depth]))
            if found is not None:
                return found
        return None

    def check(self) -> None:
        """At start: every route registered so far declares its access, or this names it."""
        for rule in self.app.url_map.iter_rules():
            if self.of(rule.endpoint) is None:
                raise UndeclaredRoute(
                    f"route {rule.endpoint} ({rule.rule}) declares no access: "
                    "add @public, @requires(...) or guard(blueprint, ...)"
                )
