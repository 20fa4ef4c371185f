"""What the accounts part of a config would trip over at start, reported without starting."""
from __future__ import annotations

import os
import zoneinfo
from typing import Any

from tornado_proxy.accounts.file import has_credential
from tornado_proxy.accounts.policy import parse_policy


def check_config(providers_conf: list[dict[str, Any]], accounts_doc: dict[str, Any] | None = None) -> list[str]:
    """Problems a start would hit, for ``bin/tornado-proxy-check`` and startup validation."""
    problems: list[str] = []
    ids: dict[str, str] = {}
    names = {p.get("name") for p in providers_conf}
    for p in providers_conf:
        name = p.get("name")
        try:
            parse_policy(p.get("scheduler"))
        except (ValueError, KeyError, zoneinfo.ZoneInfoNotFoundError) as e:
            problems.append(f"providers[{name}].scheduler: {e}")
        src = p.get("accounts_from")
        if src:
            owner = next((q for q in providers_conf if q.get("name") == src), None)
            if owner is None or src == name or owner.get("accounts_from"):
                problems.append(f"providers[{name}].accounts_from: {src!r} is not a provider with accounts of its own")
            if p.get("accounts"):
                problems.append(f"providers[{name}].accounts: a provider that takes its accounts from "
                                f"'{src}' has none of its own")
        for i, a in enumerate(p.get("accounts") or []):
            aid = str(a.get("id") or f"{name}-{i}")
            if aid in ids:
                problems.append(f"providers[{name}].accounts[{i}]: id '{aid}' is also used by provider '{ids[aid]}'")
            ids[aid] = str(name)
            if a.get("refresh_token"):
                problems.append(f"providers[{name}].accounts[{i}]: OAuth accounts belong in the accounts file")
            if a.get("api_key_env") and not os.environ.get(a["api_key_env"]):
                problems.append(f"providers[{name}].accounts[{i}]: environment variable "
                                f"{a['api_key_env']} is not set")
    for i, ent in enumerate((accounts_doc or {}).get("accounts") or []):
        aid, prov = ent.get("id"), ent.get("provider")
        if prov not in names:
            problems.append(f"accounts file: accounts[{i}] ('{aid}') names unknown provider '{prov}'")
            continue
        sharing = next(p for p in providers_conf if p.get("name") == prov).get("accounts_from")
        if sharing:
            problems.append(f"accounts file: accounts[{i}] ('{aid}') names provider '{prov}', which takes its "
                            f"accounts from '{sharing}': name '{sharing}'")
            continue
        if has_credential(ent):
            if aid in ids and ids[aid] != prov:
                problems.append(f"accounts file: accounts[{i}] id '{aid}' is also used by provider '{ids[aid]}'")
            if ent.get("refresh_token"):
                pconf = next(p for p in providers_conf if p.get("name") == prov)
                if not (pconf.get("scheduler") or {}).get("oauth"):
                    problems.append(f"accounts file: accounts[{i}] ('{aid}') holds a refresh token but provider "
                                    f"'{prov}' has no scheduler.oauth")
        elif aid not in ids:
            problems.append(f"accounts file: accounts[{i}] ('{aid}') has no credential and no config account")
    return problems
