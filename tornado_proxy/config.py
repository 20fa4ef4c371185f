"""Configuration: load, substitute secrets from the environment, validate, route models.

A config file is JSON validated against ``schemas/config.schema.json``.  Secrets are
written ``${ENV_NAME}`` (or ``${ENV_NAME:-default}``) and read from the environment
when the file is loaded, so the file itself never holds them.  A provider with
``"when_env": ["NAME", ...]`` is only configured when those variables are set: that is
how the built-in default (``conf/default.json``) serves OpenAI, Anthropic, Gemini and
Bedrock from the standard environment variables and nothing else without them.

Every problem is reported with the JSON path of the offending value and what was
expected, all at once, so ``--check-config`` lists everything to fix in one go.
"""
from __future__ import annotations

import copy
import fnmatch
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Mapping

import jsonschema

from tornado_proxy import jsonutil
from tornado_proxy.resources import data_dir

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

SERVER_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 8000,
    "access_keys": [],
    "access_key_header": "X-Proxy-Key",
    "admin_token": "",
    "cors_origins": [],
    "max_body_bytes": 32 * 1024 * 1024,
    "drain_seconds": 30.0,
    "max_clients": 10000,
    "log_format": "text",
    "log_level": "info",
    "workers": 0,   # 0: one per core
    "busy_poll_us": 50,  # the event loop polls up to this long before sleeping (busypoll.py); 0: off
    # Our own server side and curl driver, or Tornado's stock ones (docs/architecture.md).
    "http_server": "fast",
    "upstream_client": "fast",
    # Limits at the boundary (docs/operations-limits.md).
    "max_connections": 10000,        # client connections per worker; at the limit idle ones are shed
    "client_header_timeout": 10.0,   # seconds for a whole request head (from its first byte / the accept)
    "client_body_timeout": 30.0,     # seconds without a body byte while a request body is read
    "keepalive_timeout": 75.0,       # seconds a connection may wait idle between requests
    "max_upstream_body_bytes": 64 * 1024 * 1024,  # a buffered upstream answer (and one SSE event)
    "max_upstream_error_bytes": 1024 * 1024,      # a buffered upstream error body
    "responses_websocket": True,     # GET /v1/responses upgraded (Codex's WebSocket transport); off: 426
    "websocket_idle_seconds": 300.0,  # a WebSocket with no request in flight and no frame this long: closed; 0: never
}

TIMEOUT_DEFAULTS = {"connect": 10.0, "first_byte": 300.0, "idle": 300.0}


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join("  " + p for p in problems))
        self.problems = problems


def schema_dir() -> Path:
    return data_dir("schemas")


def conf_dir() -> Path:
    return data_dir("conf")


def json_path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _substitute(node: Any, env: Mapping[str, str], path: list[Any], problems: list[str]) -> Any:
    if isinstance(node, str):
        if "${" not in node:
            return node

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            value = env.get(name)
            if value is None or value == "":
                if default is not None:
                    return default
                problems.append(f"{json_path(path)}: environment variable {name} is not set")
                return ""
            return value

        return _ENV_REF.sub(repl, node)
    if isinstance(node, list):
        return [_substitute(v, env, path + [i], problems) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: v if k == "$comment" else _substitute(v, env, path + [k], problems) for k, v in node.items()}
    return node


def _schema_problems(raw: Any) -> list[str]:
    schema = jsonutil.loads((schema_dir() / "config.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(f"{json_path(err.absolute_path)}: {_explain(err)}")
    return problems


_SECRET_WORDS = ("key", "token", "secret", "password")


def _explain(err: jsonschema.ValidationError) -> str:
    last = str(err.absolute_path[-1]) if err.absolute_path else ""
    if any(w in last.lower() for w in _SECRET_WORDS):
        return f"invalid value (failed '{err.validator}'; the value is a secret and is not shown)"
    if err.validator == "additionalProperties":
        return err.message.replace("Additional properties are not allowed", "unknown key(s)")
    if err.validator == "enum":
        return f"expected one of {err.validator_value}, got {err.instance!r}"
    if err.validator == "type":
        return f"expected {err.validator_value}, got {type(err.instance).__name__} {err.instance!r}"
    if err.validator == "required":
        return err.message.replace("is a required property", "is required")
    return err.message


class Config:
    """A loaded, validated configuration."""

    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source
        self.server: dict[str, Any] = {**SERVER_DEFAULTS, **(raw.get("server") or {})}
        # "${KEY_2:-}" that is unset means "no second key", not an empty key that anyone could send.
        self.server["access_keys"] = [k for k in self.server["access_keys"] if k]
        self.providers: list[dict[str, Any]] = raw.get("providers") or []
        self.models: list[dict[str, Any]] = raw.get("models") or []
        self.accounts_file: str | None = raw.get("accounts_file")
        self.state: dict[str, Any] = raw.get("state") or {}
        for p in self.providers:
            p["timeouts"] = {**TIMEOUT_DEFAULTS, **(p.get("timeouts") or {})}
            # Likewise an account whose only credential is "${KEY:-}" unset: no such account.
            if p.get("accounts"):
                p["accounts"] = [a for a in p["accounts"] if not _unset_key(a)]


def _unset_key(account: Mapping[str, Any]) -> bool:
    return account.get("api_key") == "" and not any(
        account.get(f) for f in ("api_key_env", "refresh_token", "access_token", "aws_access_key_id"))


def _strip_conditional(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Drop providers whose ``when_env`` variables are unset, and their models."""
    raw = copy.deepcopy(raw)
    kept, dropped = [], set()
    for p in raw.get("providers") or []:
        need = p.pop("when_env", None) if isinstance(p, dict) else None
        if need and not all(env.get(n) for n in need):
            dropped.add(p.get("name"))
            continue
        kept.append(p)
    if "providers" in raw:
        raw["providers"] = kept
    if "models" in raw:
        raw["models"] = [m for m in raw["models"] if not (isinstance(m, dict) and m.get("provider") in dropped)]
    return raw


def _schema_with_when_env(raw: Any) -> list[str]:
    # when_env is removed before validation; check its shape here.
    problems = []
    if isinstance(raw, dict):
        for i, p in enumerate(raw.get("providers") or []):
            if isinstance(p, dict) and "when_env" in p:
                v = p["when_env"]
                if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                    problems.append(f"$.providers[{i}].when_env: expected a list of environment variable names")
    return problems


def load_raw(path: str | None) -> tuple[Any, str]:
    if path is None:
        path = str(conf_dir() / "default.json")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        return jsonutil.loads(text), path
    except ValueError as exc:
        raise ConfigError([f"{path}: not valid JSON: {exc}"]) from None


def build(raw: Any, source: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate ``raw`` (a parsed config file) and return the Config, or raise ConfigError."""
    env = os.environ if env is None else env
    problems = _schema_with_when_env(raw)
    if not isinstance(raw, dict):
        raise ConfigError([f"$: expected an object, got {type(raw).__name__}"])
    if problems:
        raise ConfigError(problems)
    raw = _strip_conditional(raw, env)
    # Substitute first so that patterns (base_url) apply to the real values; error
    # messages never quote the value of a secret-looking field (see _explain).
    raw = _substitute(raw, env, [], problems)
    problems.extend(_schema_problems(raw))
    if problems:
        raise ConfigError(problems)
    problems.extend(_semantic_problems(raw))
    from tornado_proxy.state.config import problems as state_problems

    problems.extend(state_problems(raw))
    if not problems:
        problems.extend(_account_problems(raw, source))
    if problems:
        raise ConfigError(problems)
    return Config(raw, source)


def _account_problems(raw: dict[str, Any], source: str) -> list[str]:
    """The scheduler's own checks: duplicate account ids, OAuth accounts outside the accounts file..."""
    from tornado_proxy.accounts.check import check_config

    doc = None
    path = raw.get("accounts_file")
    if path:
        if not os.path.isabs(path) and source and os.path.isfile(source):
            path = os.path.join(os.path.dirname(os.path.abspath(source)), path)
        if os.path.exists(path):
            try:
                doc = jsonutil.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                return [f"$.accounts_file: cannot read {path}: {exc}"]
    return check_config(raw.get("providers") or [], doc if isinstance(doc, dict) else None)


def load(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    raw, source = load_raw(path)
    return build(raw, source, env)


def _semantic_problems(raw: dict[str, Any]) -> list[str]:
    from providers import PROVIDER_TYPES
    from providers.headers import problems as header_problems

    types = dict(PROVIDER_TYPES)
    problems: list[str] = []
    server = raw.get("server") or {}
    for i, net in enumerate(server.get("trusted_proxies") or []):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"$.server.trusted_proxies[{i}]: expected an IP address or CIDR, got {net!r}")
    pinning = server.get("account_pinning")
    if isinstance(pinning, list):
        keys = set(server.get("access_keys") or [])
        for i, k in enumerate(pinning):
            if k and k not in keys:
                problems.append(f"$.server.account_pinning[{i}]: not one of server.access_keys")
    names: dict[str, int] = {}
    for i, p in enumerate(raw.get("providers") or []):
        if p["name"] in names:
            problems.append(f"$.providers[{i}].name: duplicate provider name {p['name']!r}")
        names[p["name"]] = i
        if p["type"] not in types:
            problems.append(f"$.providers[{i}].type: unknown provider type {p['type']!r}; "
                            f"expected one of {sorted(types)}")
        ids: set[str] = set()
        for j, a in enumerate(p.get("accounts") or []):
            aid = a.get("id")
            if aid is not None:
                if aid in ids:
                    problems.append(f"$.providers[{i}].accounts[{j}].id: duplicate account id {aid!r}")
                ids.add(aid)
        problems.extend(header_problems(p.get("headers"), f"$.providers[{i}].headers", f"provider {p['name']!r}"))
        for j, a in enumerate(p.get("accounts") or []):
            problems.extend(header_problems(a.get("headers"), f"$.providers[{i}].accounts[{j}].headers",
                                            f"provider {p['name']!r}, account {a.get('id')!r}"))
    seen: dict[str, str] = {}
    for i, m in enumerate(raw.get("models") or []):
        problems.extend(header_problems(m.get("headers"), f"$.models[{i}].headers", f"model {m['id']!r}"))
        if m["provider"] not in names:
            problems.append(f"$.models[{i}].provider: no provider named {m['provider']!r}")
        for j, name in enumerate([m["id"], *(m.get("aliases") or [])]):
            where = f"$.models[{i}].id" if j == 0 else f"$.models[{i}].aliases[{j - 1}]"
            if name in seen:
                problems.append(f"{where}: model name {name!r} is already used by {seen[name]}")
            seen[name] = where
    if not problems:
        for i, p in enumerate(raw.get("providers") or []):
            cls = types[p["type"]]
            mine = [m for m in raw.get("models") or [] if m["provider"] == p["name"]]
            try:
                inst = cls({**p, "timeouts": {**TIMEOUT_DEFAULTS, **(p.get("timeouts") or {})}})
                problems.extend(f"$.providers[{i}]: {msg}" if not msg.startswith("$") else msg
                                for msg in inst.validate(mine))
            except Exception as exc:  # a provider that cannot even be built is a config problem
                problems.append(f"$.providers[{i}]: {exc}")
    return problems


class Router:
    """Model name -> (model entry with ``upstream_model`` resolved, provider)."""

    def __init__(self, models: list[dict[str, Any]], providers: Mapping[str, Any]) -> None:
        self.providers = providers
        self.exact: dict[str, dict[str, Any]] = {}
        self.patterns: list[dict[str, Any]] = []
        for m in models:
            if any(c in m["id"] for c in "*?["):
                self.patterns.append(m)
            else:
                self.exact[m["id"]] = m
            for a in m.get("aliases") or []:
                self.exact[a] = m
        self._cache: dict[str, tuple[dict[str, Any], Any]] = {}

    def resolve(self, name: str) -> tuple[dict[str, Any], Any] | None:
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        m = self._match(name)
        if m is None and name.endswith("-thinking"):
            # "<model>-thinking" asks the model for its reasoning; providers read the
            # suffix from the requested name, which stays in the request.
            m = self._match(name[: -len("-thinking")])
            if m is not None:
                m = {**m, "_thinking_alias": True}
        if m is None:
            return None
        if "upstream_model" not in m or m.get("_pattern"):
            base = name[: -len("-thinking")] if m.get("_thinking_alias") else name
            if base in (m.get("aliases") or ()) and m not in self.patterns:
                base = m["id"]  # an alias is the gateway's other name for the model, not the upstream's
            prefix = m.get("strip_prefix")
            if prefix and base.startswith(prefix):
                base = base[len(prefix):]
            m = {**m, "upstream_model": m.get("upstream_model") or base}
        hit = (m, self.providers[m["provider"]])
        if len(self._cache) < 4096:  # bounded: names come from clients
            self._cache[name] = hit
        return hit

    def _match(self, name: str) -> dict[str, Any] | None:
        m = self.exact.get(name)
        if m is not None:
            return m
        for p in self.patterns:
            if fnmatch.fnmatchcase(name, p["id"]):
                return p
        return None

    def listed(self) -> list[dict[str, Any]]:
        """Models for GET /v1/models: every exact id and alias (patterns are not listable)."""
        return [{"id": n, "object": "model", "created": 0,
                 "owned_by": m.get("owned_by") or m["provider"]} for n, m in self.exact.items()]
