"""Errors as the OpenAI API returns them: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

Clients (the ``openai`` package, LangChain, curl scripts) read these fields; a bad request is always one of
these, never a 500 with a traceback.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
               500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """A request the server refuses: the HTTP status, one line for the user, the offending ``param``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)
