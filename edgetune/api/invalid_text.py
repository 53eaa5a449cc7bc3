"""Text a database cannot store, refused at the door: NUL characters (PostgreSQL's text types
reject them) and lone surrogates (not encodable as UTF-8), in the path, the query or a JSON body,
answer 422 naming the field, before any route or database sees them. Without this a NUL in an id
reached the driver, whose error read as an outage (503, which clients retry)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Byte sequences that a JSON body holding invalid text must contain: a raw NUL or an escaped
#: one, or an escaped surrogate (a lone one is only writable escaped). A body without any is
#: passed on unparsed.
_SUSPECT_BYTES = (b"\x00", b"\\u0000", b"\\ud8", b"\\ud9", b"\\uda", b"\\udb", b"\\udc",
                  b"\\udd", b"\\ude", b"\\udf", b"\\uD8", b"\\uD9", b"\\uDA", b"\\uDB",
                  b"\\uDC", b"\\uDD", b"\\uDE", b"\\uDF")
_RULE = "must be valid text: no NUL (\\u0000) characters and no lone surrogates"


def invalid_text(text: str) -> bool:
    """Whether `text` holds a character no database column of ours can store."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def invalid_json_field(document: Any) -> list[str | int] | None:
    """Where in a parsed JSON `document` the first invalid string (value or key) is, or None."""
    stack: list[tuple[list[str | int], Any]] = [([], document)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, str):
            if invalid_text(value):
                return loc
        elif isinstance(value, dict):
            for key, item in value.items():
                if invalid_text(key):
                    return [*loc, _printable(key)]
                stack.append(([*loc, key], item))
        elif isinstance(value, list):
            stack.extend(([*loc, i], item) for i, item in enumerate(value))
    return None


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace").replace(
        "\x00", "\\u0000")


class RefuseInvalidText:
    """ASGI middleware: 422 for invalid text in the path, a query parameter or a JSON body.

    A JSON body is read whole (the body size cap, outside this, bounds it) and parsed only when
    it holds one of the byte sequences that invalid text needs, so valid requests pay a byte
    search. Other bodies (uploaded models) pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if invalid_text(scope["path"]):
            await _refuse(scope, receive, send, ["path"])
            return
        query = scope.get("query_string", b"").decode("latin-1")
        for name, value in parse_qsl(query, keep_blank_values=True):
            if invalid_text(name) or invalid_text(value):
                await _refuse(scope, receive, send, ["query", _printable(name)])
                return
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        if b"json" not in content_type.lower():
            await self.app(scope, receive, send)
            return
        messages = list(await _read_body(receive))
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        if any(s in body for s in _SUSPECT_BYTES):
            loc = _json_loc(body)
            if loc is not None:
                await _refuse(scope, receive, send, ["body", *loc])
                return

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


async def _read_body(receive: Receive) -> Iterator[Message]:
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return iter(messages)


def _json_loc(body: bytes) -> list[str | int] | None:
    """Where the body's invalid text is; `[]` for a raw NUL outside any string (not JSON: the
    route would answer 422 too), None when the body is fine or unparseable."""
    try:
        # surrogatepass: an escaped lone surrogate parses into a str; raw invalid UTF-8 does not.
        document = json.loads(body.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):
        return None
    return invalid_json_field(document)


async def _refuse(scope: Scope, receive: Receive, send: Send, loc: list[str | int]) -> None:
    detail = [{"loc": loc, "msg": _RULE, "type": "value_error"}]
    await JSONResponse(status_code=422, content={"detail": detail})(scope, receive, send)
