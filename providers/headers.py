"""Header templates: configured header values with per-request placeholders.

A vendor may want a fresh id in a header on every request, the gateway's request id,
or the client's session id (Factory-style CLIs send one).  Rather than a vendor special
case, any configured header value (a provider's ``headers``, a model's ``headers``, an
account's ``headers``) may hold these placeholders:

* ``{uuid}``: a fresh random UUID (version 4) for each upstream attempt;
* ``{request_id}``: the gateway's id of this request (the response id it returns to
  the client, the same across failover attempts);
* ``{session_id}``: the client's session id, read from the provider's
  ``session_id_header`` (default ``x-session-id``); checked against ``SESSION_ID``
  (a client value never reaches an upstream header unvalidated: a bad one is a 400
  naming the header); a client that sends none gets a fresh UUID for the request.

Any other ``{word}`` in a configured value is a configuration error (a typo would
otherwise go upstream as literal text).  Only the values the configuration wrote are
expanded: a header the client passed through is never read as a template.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from tornado_proxy.errors import ErrorKind, ProxyError

PLACEHOLDERS = ("uuid", "request_id", "session_id")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
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


def problems(headers: Mapping[str, Any] | None, where: str) -> list[str]:
    """Unknown placeholders in configured header values (checked at start)."""
    out = []
    for name, value in (headers or {}).items():
        if not isinstance(value, str):
            continue
        for m in _PLACEHOLDER.finditer(value):
            if m.group(1) not in PLACEHOLDERS:
                out.append(f"{where}.{name}: unknown placeholder {{{m.group(1)}}}; "
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
