"""API errors in OpenAI's error format: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from medlm.serving.schemas import ErrorBody, ErrorResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error the client caused (4xx) or a server failure (5xx), rendered as OpenAI does."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def __reduce__(self):  # crosses process boundaries (deployment -> ingress) intact
        return APIError, (self.status, self.message, self.param, self.code)

    def body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorBody(
                message=self.message,
                type=ERROR_TYPES.get(self.status, "api_error"),
                param=self.param,
                code=self.code,
            )
        )

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body().model_dump(), status_code=self.status, headers=headers)


def unwrap(exc: BaseException) -> BaseException:
    """The APIError a deployment raised, from inside Ray's wrapper; else the exception itself."""
    from ray.exceptions import RayTaskError

    cause = exc.cause if isinstance(exc, RayTaskError) else exc
    return cause if isinstance(cause, APIError) else exc


def as_api_error(exc: BaseException) -> APIError:
    """What a client is told of a failure: the deployment's APIError, else a 500 that says nothing more."""
    err = unwrap(exc)
    return err if isinstance(err, APIError) else APIError(500, "internal server error")
