"""OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every refusal the gateway makes goes through here, so a client (and the official `openai` client's
exception classes) always sees the same shape, whatever went wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

__all__ = ["ApiError", "error_body", "error_event", "error_response", "error_type"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status (server_error for every 5xx)."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
    """The JSON bytes of an OpenAI-style error."""
    return orjson.dumps({"error": {"message": message, "type": error_type(status), "param": param, "code": code}})


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An aiohttp response carrying an OpenAI-style error."""
    return web.Response(
        status=status,
        body=error_body(status, message, param=param, code=code),
        content_type="application/json",
        headers=headers,
    )


def error_event(status: int, message: str, *, code: str | None = None) -> bytes:
    """An in-band server-sent event carrying an OpenAI-style error, for a stream already under way."""
    return b"data: " + error_body(status, message, code=code) + b"\n\n"


class ApiError(Exception):
    """A request the gateway refuses; the handler turns it into an `error_response`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> web.Response:
        """This error as an HTTP response."""
        return error_response(self.status, self.message, param=self.param, code=self.code, headers=self.headers)
