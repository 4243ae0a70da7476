"""The managed-things routes of the local API (mounted by ``edge-agent run``).

* ``POST /managed-things``: the seed's ``CreateManagedThing`` body → ``201 {Arn, CreatedAt,
  Id}``; the same ``ClientToken`` and body answer the first response again (201), the same
  token with another body is ``409 ConflictException``; an invalid body is ``400
  ValidationException`` with every field problem. The thing is then commissioned in the
  background when the daemon has radios or a scanner configured.
* ``GET /managed-things[?status=S]``: ``{"Items": [...]}`` as ``things list``.
* ``GET /managed-things/{id}``: the thing as ``things describe`` (the code redacted; the API
  never shows secrets).
* ``DELETE /managed-things/{id}``: ``{"Id", "Deleted": true}`` as ``things delete``.

Errors have the agent's error shape with the seed exception's status code.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from aiohttp import web

from agent.api import json_response, read_json
from agent.commissioning.things import CreateResult, ManagedThings
from agent.errors import FieldProblem, InvalidRequestError, ValidationError

#: The seed's managed-thing ``Identifier`` (``Id``: 1-64 of ``[a-zA-Z0-9:_-]``).
_IDENTIFIER = re.compile(r"[a-zA-Z0-9:_-]{1,64}")
_QUERY = frozenset({"status"})


class ManagedThingsService(Protocol):
    """What the routes need from the daemon's commissioning side."""

    @property
    def things(self) -> ManagedThings:
        """The managed things."""

    def create(self, body: Any) -> CreateResult:
        """Create (and commission) a managed thing."""


def _identifier(request: web.Request) -> str:
    value = request.match_info["id"]
    if not _IDENTIFIER.fullmatch(value):
        raise ValidationError(
            "the managed-thing identifier is 1-64 of [a-zA-Z0-9:_-]",
            reason="FIELD_VALIDATION_FAILED",
            fields=[FieldProblem("Identifier", "must match [a-zA-Z0-9:_-]{1,64}")],
        )
    return value


def routes(service: ManagedThingsService) -> list[web.RouteDef]:
    """The routes, bound to ``service``."""

    async def create(request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
        except InvalidRequestError:
            raise ValidationError(
                "the request body is not valid JSON",
                reason="INVALID_JSON",
                fields=[FieldProblem("<body>", "not strict JSON")],
            ) from None
        result = service.create(body)
        return json_response(result.body, status=result.status_code)

    async def listing(request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - _QUERY)
        if unknown:
            raise ValidationError(
                f"unknown query parameter(s): {', '.join(unknown)}",
                reason="FIELD_VALIDATION_FAILED",
                fields=[FieldProblem(name, "unknown parameter") for name in unknown],
            )
        status = request.query.get("status")
        return json_response({"Items": service.things.list(status=status)})

    async def describe(request: web.Request) -> web.Response:
        return json_response(service.things.describe(_identifier(request)))

    async def delete(request: web.Request) -> web.Response:
        thing_id = _identifier(request)
        service.things.delete(thing_id)
        return json_response({"Id": thing_id, "Deleted": True})

    return [
        web.post("/managed-things", create),
        web.get("/managed-things", listing),
        web.get("/managed-things/{id}", describe),
        web.delete("/managed-things/{id}", delete),
    ]
