"""Every error the HTTP API returns: JSON with a stable code and a message, never a traceback.

``{"error": {"code": "not_found", "message": "no run 2026..."}}``; the codes are ``ERROR_CODES``.
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dxgraph.errors import UserError

ErrorCode = Literal[
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "invalid_request",
    "too_large",
    "internal_error",
]
"""The stable codes of the API's errors."""
ERROR_CODES: dict[int, ErrorCode] = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
    500: "internal_error",
}
"""HTTP status -> the code sent with it."""
_log = logging.getLogger("dxgraph.server")


class ApiError(HTTPException):
    """An error answered with its status and code."""

    def __init__(self, status_code: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)


def error_body(status_code: int, message: str) -> dict[str, dict[str, str]]:
    """The JSON body of an error."""
    return {"error": {"code": ERROR_CODES.get(status_code, "invalid_request"), "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as JSON with a stable code: HTTP errors, invalid requests, bad input, bugs."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code if exc.status_code in ERROR_CODES else 422
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse(error_body(status, message), status_code=status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return JSONResponse(error_body(422, "; ".join(parts) or "invalid request"), status_code=422)

    @app.exception_handler(UserError)
    async def _user(_: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(error_body(422, str(exc)), status_code=422)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, "internal error; it is in the server's log"), status_code=500)
