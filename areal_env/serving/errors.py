"""OpenAI-style error objects: every refusal of the server, with its HTTP status.

An agent program sees our server through the official ``openai`` client, which
turns a 4xx/5xx body of the form ``{"error": {"message", "type", "param",
"code"}}`` into a typed exception (``BadRequestError``, ``AuthenticationError``,
``PermissionDeniedError``...) whose message is ours. So every refusal is an
:class:`APIError` carrying those four fields, and nothing else leaves the server
as an error: a body that the client could not parse would surface as a bare
status with no reason, which is what makes a black-box agent hard to debug.

The client retries 408, 409, 429 and 5xx responses (and timeouts) by itself; a
refusal that retrying cannot fix must therefore be a 4xx outside that set.

Example:
    >>> e = bad_request("temperature must be >= 0", param="temperature")
    >>> e.status, e.body()["error"]["param"]
    (400, 'temperature')
"""

from __future__ import annotations

import re
from typing import Any


class APIError(Exception):
    """A refusal with an HTTP status and an OpenAI error object.

    Args:
        status: HTTP status code.
        message: what went wrong and, where it helps, what to do instead.
        type: OpenAI's error ``type`` (``invalid_request_error``, ``server_error``...).
        param: the request parameter at fault, if one is.
        code: a short machine-readable reason (``invalid_api_key``, ``session_closed``...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's API answers errors with."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``: the request cannot be served as it is."""
    return APIError(400, message, param=param, code=code)


# The chat client names the parameter at the start of its messages:
# "chat.completions.create: parameter 'seed' is not supported", "... n=2 cannot ...",
# "... temperature must be ...", "tools[0]: only function tools", "messages: ...".
_PARAM_RE = re.compile(
    r"^(?:(?:chat\.)?completions\.create: (?:parameter '(\w+)'|(\w+))|(messages|tools)\b)"
)
_CONTEXT_RE = re.compile(r"accepts \d+ positions|context length|too long", re.IGNORECASE)


def from_call_error(error: Exception) -> APIError:
    """The 400 for a ``ValueError``/``TypeError`` raised while checking or running a call.

    The chat client and the engines refuse bad arguments with these; the
    parameter they name becomes ``param``, and a prompt longer than the model's
    context becomes OpenAI's ``context_length_exceeded``.

    Example:
        >>> e = from_call_error(ValueError("chat.completions.create: n=2 cannot be honoured"))
        >>> e.status, e.param, e.code
        (400, 'n', 'unsupported_value')
    """
    message = str(error)
    if _CONTEXT_RE.search(message):
        return bad_request(message, param="messages", code="context_length_exceeded")
    match = _PARAM_RE.match(message)
    param = next((g for g in match.groups() if g), None) if match else None
    if isinstance(error, TypeError):
        return bad_request(message, param=param, code="unsupported_parameter")
    return bad_request(message, param=param, code="unsupported_value")


def unauthorized(message: str, code: str = "invalid_api_key") -> APIError:
    """A 401: no API key, or one the server does not know."""
    return APIError(401, message, type="authentication_error", code=code)


def forbidden(message: str) -> APIError:
    """A 403: a valid key used where it does not belong (another session's routes)."""
    return APIError(403, message, type="permission_error", code="wrong_session")


def session_closed(session_id: str) -> APIError:
    """A 410 for a closed session: not retried by the client, since retrying cannot help."""
    return APIError(
        410,
        f"session {session_id} is closed: its episode is over and records no more calls",
        code="session_closed",
    )


def not_found(message: str) -> APIError:
    """A 404 in OpenAI's shape."""
    return APIError(404, message, code="not_found")


def server_error(message: str, *, status: int = 500) -> APIError:
    """A 5xx ``server_error`` (the client retries these)."""
    return APIError(status, message, type="server_error", code="server_error")


__all__ = [
    "APIError",
    "bad_request",
    "forbidden",
    "from_call_error",
    "not_found",
    "server_error",
    "session_closed",
    "unauthorized",
]
