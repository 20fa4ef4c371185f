"""One vocabulary of errors and one table that maps each to what clients see.

Every failure in the gateway, whether it is bad input, a missing key or an
upstream that fell over, becomes a :class:`ProxyError` with an
:class:`ErrorKind`.  The table below says, for each kind, the HTTP status, the
OpenAI ``error.type`` / ``code``, the Anthropic ``error.type`` and what the
account scheduler should do about it.  Renderers for each client format live
here too so that no handler builds an error body by hand.
"""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Iterable


class Action(enum.Enum):
    """What the account scheduler does with an upstream failure."""

    NONE = "none"            # the client's fault: no effect on the account
    RETRY = "retry"          # transient: try another account, no penalty beyond health
    COOLDOWN = "cooldown"    # rate limited / overloaded: cool the account down, try another
    AUTH = "auth"            # 401/403: count towards disabling, try another
    DISABLE = "disable"      # 402, revoked key: disable at once, try another


class ErrorKind(enum.Enum):
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED = "unsupported_parameter"
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    AUTH_MISSING = "auth_missing"
    AUTH_INVALID = "auth_invalid"
    FORBIDDEN = "forbidden"
    BODY_TOO_LARGE = "body_too_large"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_BAD_REQUEST = "upstream_bad_request"
    UPSTREAM_AUTH = "upstream_auth"
    UPSTREAM_PAYMENT = "upstream_payment"
    UPSTREAM_FORBIDDEN = "upstream_forbidden"
    UPSTREAM_NOT_FOUND = "upstream_not_found"
    UPSTREAM_RATE_LIMITED = "upstream_rate_limited"
    UPSTREAM_OVERLOADED = "upstream_overloaded"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
    UPSTREAM_STREAM_CUT = "upstream_stream_cut"
    UPSTREAM_SIGNATURE = "upstream_signature"
    CONNECT_TIMEOUT = "connect_timeout"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    NO_ACCOUNT = "no_account"
    DRAINING = "draining"
    CONTENT_FILTER = "content_filter"
    INTERNAL = "internal"


@dataclass(frozen=True)
class KindInfo:
    status: int
    openai_type: str
    openai_code: str | None
    anthropic_type: str
    action: Action
    retryable: bool  # before the first byte, may another account be tried?


K = ErrorKind
A = Action
# status, OpenAI error.type, OpenAI code, Anthropic error.type, scheduler action, failover
ERROR_TABLE: dict[ErrorKind, KindInfo] = {
    K.INVALID_JSON: KindInfo(400, "invalid_request_error", "invalid_json", "invalid_request_error", A.NONE, False),
    K.INVALID_REQUEST: KindInfo(400, "invalid_request_error", "invalid_value", "invalid_request_error", A.NONE, False),
    K.UNSUPPORTED: KindInfo(400, "invalid_request_error", "unsupported_parameter", "invalid_request_error", A.NONE, False),
    K.NOT_FOUND: KindInfo(404, "invalid_request_error", "not_found", "not_found_error", A.NONE, False),
    K.MODEL_NOT_FOUND: KindInfo(404, "invalid_request_error", "model_not_found", "not_found_error", A.NONE, False),
    K.AUTH_MISSING: KindInfo(401, "invalid_request_error", "missing_api_key", "authentication_error", A.NONE, False),
    K.AUTH_INVALID: KindInfo(401, "invalid_request_error", "invalid_api_key", "authentication_error", A.NONE, False),
    K.FORBIDDEN: KindInfo(403, "permission_error", "forbidden", "permission_error", A.NONE, False),
    K.BODY_TOO_LARGE: KindInfo(413, "invalid_request_error", "request_too_large", "request_too_large", A.NONE, False),
    K.METHOD_NOT_ALLOWED: KindInfo(405, "invalid_request_error", "method_not_allowed", "invalid_request_error", A.NONE, False),
    K.RATE_LIMITED: KindInfo(429, "rate_limit_error", "rate_limit_exceeded", "rate_limit_error", A.NONE, False),
    K.UPSTREAM_BAD_REQUEST: KindInfo(400, "invalid_request_error", "upstream_bad_request", "invalid_request_error", A.NONE, False),
    K.UPSTREAM_AUTH: KindInfo(502, "upstream_error", "upstream_auth_failed", "api_error", A.AUTH, True),
    K.UPSTREAM_PAYMENT: KindInfo(502, "upstream_error", "upstream_payment_required", "api_error", A.DISABLE, True),
    K.UPSTREAM_FORBIDDEN: KindInfo(502, "upstream_error", "upstream_forbidden", "api_error", A.AUTH, True),
    K.UPSTREAM_NOT_FOUND: KindInfo(404, "invalid_request_error", "upstream_not_found", "not_found_error", A.NONE, False),
    K.UPSTREAM_RATE_LIMITED: KindInfo(429, "rate_limit_error", "rate_limit_exceeded", "rate_limit_error", A.COOLDOWN, True),
    K.UPSTREAM_OVERLOADED: KindInfo(503, "server_error", "upstream_overloaded", "overloaded_error", A.COOLDOWN, True),
    K.UPSTREAM_ERROR: KindInfo(502, "server_error", "upstream_error", "api_error", A.RETRY, True),
    K.UPSTREAM_UNREACHABLE: KindInfo(502, "server_error", "upstream_unreachable", "api_error", A.RETRY, True),
    K.UPSTREAM_BAD_RESPONSE: KindInfo(502, "server_error", "upstream_bad_response", "api_error", A.RETRY, False),
    K.UPSTREAM_STREAM_CUT: KindInfo(502, "server_error", "upstream_stream_cut", "api_error", A.RETRY, False),
    K.UPSTREAM_SIGNATURE: KindInfo(502, "server_error", "upstream_signature_rejected", "api_error", A.AUTH, True),
    K.CONNECT_TIMEOUT: KindInfo(504, "server_error", "upstream_connect_timeout", "timeout_error", A.RETRY, True),
    K.FIRST_BYTE_TIMEOUT: KindInfo(504, "server_error", "upstream_first_byte_timeout", "timeout_error", A.RETRY, True),
    K.IDLE_TIMEOUT: KindInfo(504, "server_error", "upstream_idle_timeout", "timeout_error", A.RETRY, False),
    K.NO_ACCOUNT: KindInfo(503, "server_error", "no_usable_account", "overloaded_error", A.NONE, False),
    K.DRAINING: KindInfo(503, "server_error", "server_draining", "overloaded_error", A.NONE, False),
    K.CONTENT_FILTER: KindInfo(400, "invalid_request_error", "content_filter", "invalid_request_error", A.NONE, False),
    K.INTERNAL: KindInfo(500, "server_error", "internal_error", "api_error", A.NONE, False),
}
del K, A


class ProxyError(Exception):
    """An error with a kind from the table.

    ``param`` names the offending field (a JSON path such as ``messages[0].role``)
    where there is one. ``retry_after`` is in seconds. ``upstream_status`` keeps the
    status the upstream sent, for logs and metrics only.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        # upstream response headers (lower-case names) for the scheduler's cooldown logic
        self.headers = headers or {}

    @property
    def info(self) -> KindInfo:
        return ERROR_TABLE[self.kind]

    @property
    def status(self) -> int:
        return ERROR_TABLE[self.kind].status

    def __repr__(self) -> str:
        return f"ProxyError({self.kind.value}, {self.message!r})"


def openai_body(err: ProxyError) -> dict[str, Any]:
    info = err.info
    return {
        "error": {
            "message": err.message,
            "type": info.openai_type,
            "param": err.param,
            "code": info.openai_code,
        }
    }


def anthropic_body(err: ProxyError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": err.info.anthropic_type, "message": err.message}}


# -- bodies a client API cannot read, in that API's own words ---------------------

def printable(text: str) -> str:
    """``text`` safe to put in an error body: a lone surrogate shows as ``\\ud800``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def format_path(path: Iterable[Any], limit: int = 0) -> str:
    """``["messages", 1, "content"]`` -> ``messages[1].content``; keys that are not plain
    names go in brackets (``metadata["user id"]``).  With ``limit``, only the first
    ``limit`` steps are shown, then ``...`` (a path 128 levels deep helps nobody)."""
    out = ""
    for n, part in enumerate(path):
        if limit and n == limit:
            return out + "..."
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = str(part)
        if name.isidentifier():
            out += "." + name if out else name
        else:
            out += "[" + printable(json.dumps(name, ensure_ascii=False)) + "]"
    return out


# Each client API's opening words for a body it could not read (OpenAI's "We could
# not parse the JSON body of your request", Anthropic's "The request body is not valid
# JSON", Google's "Invalid JSON payload received"): clients and people match on them.
_UNREADABLE = {
    "anthropic": "The request body is not valid JSON: {detail}",
    "gemini": "Invalid JSON payload received. {detail}",
}
_UNREADABLE_DEFAULT = "We could not parse the JSON body of your request: {detail}"
# A value the body holds that nothing can be built from (too deep), per API.
_INVALID_VALUE = {
    "anthropic": "{param}: {detail}",                  # pydantic-style, as Anthropic answers
    "gemini": "Invalid value at '{param}': {detail}",  # google.rpc wording
}
_INVALID_VALUE_DEFAULT = "Invalid '{param}': {detail}."
_PATH_STEPS = 12


def unreadable_body(api: str, detail: str, *, param: str | None = None) -> ProxyError:
    """A body that is not JSON (or not JSON any upstream can take), worded as ``api`` does."""
    return ProxyError(ErrorKind.INVALID_JSON, _UNREADABLE.get(api, _UNREADABLE_DEFAULT).format(detail=detail),
                      param=param)


def bad_body_value(api: str, path: list[Any], reason: str, detail: str) -> ProxyError:
    """The error for ``jsonutil.BadRequestJSON`` (``reason`` ``"depth"`` or ``"surrogate"``)."""
    param = format_path(path, _PATH_STEPS) or None
    if reason == "surrogate":
        core = "holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not valid Unicode"
        if api in _UNREADABLE:
            where = f" at '{param}'" if param else ""
            return unreadable_body(api, f"the string{where} {core}", param=param)
        subject = f"'{param}'" if param else "request body"
        return ProxyError(ErrorKind.INVALID_REQUEST, f"Invalid {subject}: the string {core}; send valid UTF-8 text.",
                          param=param)
    template = _INVALID_VALUE.get(api, _INVALID_VALUE_DEFAULT)
    return ProxyError(ErrorKind.INVALID_REQUEST, template.format(param=param or "body", detail=detail), param=param)


# What the vendor's own API says for the errors the gateway raises before it has read a
# request (access key, size), where clients match on the words.  Anything not listed
# keeps the gateway's message.
API_WORDING: dict[tuple[str, ErrorKind], str] = {
    ("anthropic", ErrorKind.AUTH_MISSING): "x-api-key header is required",
    ("anthropic", ErrorKind.AUTH_INVALID): "invalid x-api-key",
    ("anthropic", ErrorKind.BODY_TOO_LARGE): "Request exceeds the maximum allowed number of bytes.",
    ("gemini", ErrorKind.AUTH_MISSING): "Method doesn't allow unregistered callers (callers without established "
                                        "identity). Please use API Key or other form of API consumer identity "
                                        "to call this API.",
    ("gemini", ErrorKind.AUTH_INVALID): "API key not valid. Please pass a valid API key.",
}


def in_words_of(api: str, err: ProxyError) -> ProxyError:
    """``err`` with the message client API ``api`` gives for its kind (see API_WORDING).
    An error that names its own field (``param``: the header an upstream credential goes
    in, say) is about something else than the vendor's access key, and keeps its words."""
    if err.param is not None:
        return err
    words = API_WORDING.get((api, err.kind))
    if words is None or words == err.message:
        return err
    return ProxyError(err.kind, words, param=err.param, retry_after=err.retry_after,
                      upstream_status=err.upstream_status, headers=err.headers)


def retry_after_header(err: ProxyError) -> str | None:
    if err.retry_after is None:
        return None
    return str(max(1, int(err.retry_after + 0.999)))


# An upstream HTTP status -> its error kind, where the status alone says it
# (anything else is UPSTREAM_ERROR).
_STATUS_KIND: dict[int, ErrorKind] = {
    400: ErrorKind.UPSTREAM_BAD_REQUEST, 422: ErrorKind.UPSTREAM_BAD_REQUEST,
    401: ErrorKind.UPSTREAM_AUTH, 402: ErrorKind.UPSTREAM_PAYMENT, 403: ErrorKind.UPSTREAM_FORBIDDEN,
    404: ErrorKind.UPSTREAM_NOT_FOUND, 413: ErrorKind.BODY_TOO_LARGE, 429: ErrorKind.UPSTREAM_RATE_LIMITED,
    503: ErrorKind.UPSTREAM_OVERLOADED, 529: ErrorKind.UPSTREAM_OVERLOADED, 504: ErrorKind.FIRST_BYTE_TIMEOUT,
}


def from_status(status: int, message: str, *, retry_after: float | None = None,
                headers: dict[str, str] | None = None) -> ProxyError:
    """The default mapping of an upstream HTTP status to an error kind.

    Providers refine this in ``classify_error`` (for example Anthropic's 529
    ``overloaded_error`` or Bedrock's ``ThrottlingException``).
    """
    kind = _STATUS_KIND.get(status, ErrorKind.UPSTREAM_ERROR)
    return ProxyError(kind, message, retry_after=retry_after, upstream_status=status, headers=headers)
