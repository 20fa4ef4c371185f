"""SigV4 for Bedrock (service ``bedrock``), botocore's signer with the time passed in."""
from __future__ import annotations

import datetime
from typing import Any

# botocore (about 16 MiB once imported) is imported on first use, so a gateway with no
# Bedrock provider never loads it.

SIGNING_SERVICE = "bedrock"

_SIGNER: Any = None


def _signer_class() -> Any:
    """botocore's SigV4 signer, with the signing time given rather than read.

    ``SigV4Auth.add_auth`` reads the clock itself; the subclass repeats its steps
    with the time passed in, calling botocore's own helpers for each (the canonical
    request, the string to sign, the key chain, the header).  Passing the time in is
    what lets a test check a known vector.
    """
    global _SIGNER
    if _SIGNER is None:
        from botocore.auth import SigV4Auth

        class _SigV4AtTime(SigV4Auth):  # type: ignore[misc]  # botocore ships no type hints
            def __init__(self, credentials: Any, service: str, region: str, timestamp: str) -> None:
                super().__init__(credentials, service, region)
                self._timestamp = timestamp

            def add_auth(self, request: Any) -> None:
                request.context["timestamp"] = self._timestamp
                self._modify_request_before_signing(request)
                canonical = self.canonical_request(request)
                signature = self.signature(self.string_to_sign(request, canonical), request)
                self._inject_signature_to_request(request, signature)

        _SIGNER = _SigV4AtTime
    return _SIGNER


def sigv4_sign(method: str, url: str, headers: dict[str, str], body: bytes, *, access_key: str,
               secret_key: str, session_token: str | None, region: str, when: float,
               service: str = SIGNING_SERVICE) -> dict[str, str]:
    """``headers`` plus ``X-Amz-Date``, ``Authorization`` (and ``X-Amz-Security-Token``).

    Every header passed in is signed, as is the SHA-256 of ``body`` and the host of
    ``url``.  ``when`` is a unix time.
    """
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    stamp = datetime.datetime.fromtimestamp(when, tz=datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    _signer_class()(Credentials(access_key, secret_key, session_token or None), service, region,
                    stamp).add_auth(request)
    return {k: v for k, v in request.headers.items()}
