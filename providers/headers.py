"""Header templates: configured header values with per-request placeholders.

A vendor may want a fresh id in a header on every request, the gateway's request id,
or the client's session id (Factory-style CLIs send one).  Rather than a vendor special
case, any configured header value (a provider's ``headers``, a model's ``headers``, an
account's ``headers``) may hold these placeholders:

* ``{uuid}``: a fresh random UUID (version 4) for each upstream attempt;
* ``{request_id}``: the gateway's id of this request, the same across failover
  attempts; the client gets it in the ``X-Request-Id`` answer header (errors too);
* ``{session_id}``: the client's session id, read from the provider's
  ``session_id_header`` (default ``x-session-id``); checked against ``SESSION_ID``
  (a client value never reaches an upstream header unvalidated: a bad one is a 400
  naming the header); a client that sends none gets a fresh UUID for the request.

Any other ``{word}`` in a configured value (``{request-id}``, ``{ uuid }`` included)
is a configuration error, as are a header name that is not an HTTP token and a value
with a control character (CR, LF, NUL...): a typo would otherwise go upstream as
literal text, and a line break would end the header and start another.  Only the
values the configuration wrote are expanded: a header the client passed through is
never read as a template, and an expanded value is never expanded again.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from tornado_proxy.errors import ErrorKind, ProxyError

PLACEHOLDERS = ("uuid", "request_id", "session_id")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# What someone meant as a placeholder, typos included: checked at start, never expanded.
_LOOKS_LIKE = re.compile(r"\{\s*[A-Za-z_][A-Za-z0-9_.-]*\s*\}")
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every control character but HTAB
# What a session id may be: the characters of UUIDs, ULIDs and the usual opaque ids.
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
DEFAULT_SESSION_HEADER = "x-session-id"


@dataclass
class RequestInfo:
    """What a provider may know about the client request besides its body.

    ``client_headers`` is the client's header mapping (case-insensitive, as the server
    gives it); anything read from it must be validated before it goes upstream.
    """

    request_id: str
    client_headers: Mapping[str, str] = field(default_factory=dict)
    _session: str | None = None

    def session_id(self, header: str) -> str:
        """The client's session id from ``header``, validated; a fresh UUID when absent.
        The same value for every attempt of this request."""
        if self._session is None:
            raw = self.client_headers.get(header)
            if raw is None or raw == "":
                self._session = str(uuid.uuid4())
            elif SESSION_ID.fullmatch(raw):
                self._session = raw
            else:
                raise ProxyError(ErrorKind.INVALID_REQUEST,
                                 f"the '{header}' header is not a valid session id: use 1 to 128 letters, "
                                 "digits, '.', '_', ':' or '-'", param=header)
        return self._session


def problems(headers: Mapping[str, Any] | None, where: str, owner: str = "") -> list[str]:
    """What is wrong with configured headers (checked at start): names that are not
    tokens, values with control characters, unknown placeholders.  ``owner`` names
    whose headers they are ("provider 'x'") in the messages."""
    out = []
    of = f"{owner}: " if owner else ""
    for name, value in (headers or {}).items():
        if not _FIELD_NAME.fullmatch(name):
            out.append(f"{where}: {of}{name!r} is not a valid header name")
            continue
        if not isinstance(value, str):
            continue
        if _CONTROL.search(value):
            out.append(f"{where}.{name}: {of}the value holds a control character (CR, LF...), "
                       "which would end the header")
        for m in _LOOKS_LIKE.finditer(value):
            if m.group(0)[1:-1] not in PLACEHOLDERS:
                out.append(f"{where}.{name}: {of}unknown placeholder {m.group(0)}; "
                           f"expected one of {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    return out


def templated(*groups: Mapping[str, Any] | None) -> dict[str, str]:
    """The configured headers (name -> template) that hold a placeholder."""
    out: dict[str, str] = {}
    for g in groups:
        for name, value in (g or {}).items():
            if isinstance(value, str) and "{" in value and _PLACEHOLDER.search(value):
                out[name.lower()] = value
    return out


def expand(headers: dict[str, str], templates: Mapping[str, str], info: RequestInfo,
           session_header: str = DEFAULT_SESSION_HEADER) -> None:
    """Fill the placeholders of the headers in ``headers`` that still hold their
    configured template (in place).  O(len(headers)); nothing happens without templates."""
    if not templates:
        return

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "uuid":
            return str(uuid.uuid4())
        if name == "request_id":
            return info.request_id
        if name == "session_id":
            return info.session_id(session_header)
        return m.group(0)

    for name, current in headers.items():
        tpl = templates.get(name.lower())
        if tpl is not None and current == tpl:
            headers[name] = _PLACEHOLDER.sub(value, tpl)
