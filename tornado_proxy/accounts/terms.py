"""The terms guard: no Claude consumer-subscription OAuth token against Anthropic's API.

Anthropic's consumer terms allow a Claude.ai (Free, Pro, Max) subscription's OAuth
credentials only in Anthropic's own apps; accounts used through third-party tools get
banned.  So a provider aimed at Anthropic's API (type ``anthropic`` with Anthropic's
own host) refuses such a credential by default: an account holding one is disabled at
start with the reason, and a client that passes one through (``allow_client_auth``) is
answered 403 in its own format.  ``allow_consumer_oauth: true`` on the provider is the
documented opt-out (docs/security.md, "Terms guard").  OAuth for other APIs (a
vendor's own endpoint, ``type: anthropic`` with another host) is not touched.

A credential counts as consumer OAuth when the account says so (``claude_ai_oauth:
true``), when the token has the prefix of Claude.ai OAuth access or refresh tokens, or
when its refresh endpoint is Claude's own OAuth token endpoint.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping
from urllib.parse import urlsplit

from tornado_proxy.errors import ErrorKind, ProxyError

log = logging.getLogger("tornado_proxy.accounts")

ANTHROPIC_HOSTS = frozenset({"api.anthropic.com"})
DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
# "sk-ant-" + "oat" (access) / "ort" (refresh): written in two parts so that no scanner
# takes this line for a key.
_PREFIX = "sk-ant-"
CONSUMER_PREFIXES = (_PREFIX + "oat", _PREFIX + "ort")
CONSUMER_TOKEN_HOSTS = frozenset({"console.anthropic.com", "claude.ai", "platform.claude.com"})
OPT_OUT = "allow_consumer_oauth"
REASON = ("terms guard: a Claude consumer-subscription (Claude.ai) OAuth token may only be used in "
          "Anthropic's own apps, not through this gateway against Anthropic's API; set "
          f"{OPT_OUT}: true on the provider to accept the risk (docs/security.md, Terms guard)")


def aims_at_anthropic(provider_conf: Mapping[str, Any]) -> bool:
    if provider_conf.get("type") != "anthropic":
        return False
    host = urlsplit(str(provider_conf.get("base_url") or DEFAULT_ANTHROPIC_URL)).hostname or ""
    return host.lower() in ANTHROPIC_HOSTS


def guarded(provider_conf: Mapping[str, Any]) -> bool:
    """Does the guard apply to this provider?"""
    return aims_at_anthropic(provider_conf) and provider_conf.get(OPT_OUT) is not True


def is_consumer_token(token: str | None) -> bool:
    return bool(token) and token.startswith(CONSUMER_PREFIXES)  # type: ignore[union-attr]


def is_consumer_account(entry: Mapping[str, Any], provider_conf: Mapping[str, Any] | None = None) -> bool:
    if entry.get("claude_ai_oauth") is True:
        return True
    if any(is_consumer_token(entry.get(k)) for k in ("api_key", "access_token", "refresh_token")):
        return True
    urls = [entry.get("token_url")]
    oauth = ((provider_conf or {}).get("scheduler") or {}).get("oauth") or {}
    if entry.get("refresh_token"):
        urls.append(oauth.get("token_url"))
    return any(isinstance(u, str) and (urlsplit(u).hostname or "").lower() in CONSUMER_TOKEN_HOSTS for u in urls)


def refused_client() -> ProxyError:
    """The answer to a client that passed a consumer OAuth token through."""
    return ProxyError(ErrorKind.FORBIDDEN,
                      "This gateway does not forward Claude consumer-subscription (Claude.ai) OAuth tokens to "
                      "Anthropic's API: Anthropic's terms allow them only in Anthropic's own apps. Use an "
                      "Anthropic API key (docs/security.md, Terms guard).")


def refused_accounts(provider: str) -> ProxyError:
    return ProxyError(ErrorKind.FORBIDDEN,
                      f"provider '{provider}' has only Claude consumer-subscription OAuth accounts, which this "
                      "gateway refuses to use against Anthropic's API (Anthropic's terms allow them only in "
                      "Anthropic's own apps; docs/security.md, Terms guard)")


def screen(provider_conf: Mapping[str, Any] | None, entry: Mapping[str, Any]) -> tuple[bool, str] | None:
    """For an account of a provider aimed at Anthropic's API (``provider_conf``; None for
    any other provider): ``(refuse, warning)`` when it holds consumer OAuth, else None."""
    if provider_conf is None or not is_consumer_account(entry, provider_conf):
        return None
    name, aid = provider_conf.get("name"), entry.get("id")
    if guarded(provider_conf):
        return True, (f"provider '{name}': account '{aid}' holds a Claude consumer-subscription OAuth token: "
                      f"refused by the terms guard (docs/security.md; opt-out: {OPT_OUT})")
    return False, (f"provider '{name}': account '{aid}' holds a Claude consumer-subscription OAuth token, "
                   f"allowed by {OPT_OUT}: Anthropic's terms forbid this use and ban accounts for it")
